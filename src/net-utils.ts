// Small TCP helpers shared by the dev runner and the test helpers: a free loopback port, and
// waiting for a port to open or close.
import { connect, createServer } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'

/** A port nothing listens on right now (the OS picks it; another process may still take it). */
export async function freePort (host = '127.0.0.1'): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, host, () => {
      const { port } = srv.address() as { port: number }
      srv.close(() => resolve(port))
    })
  })
}

/** Whether something accepts TCP connections at host:port. */
export async function isPortOpen (port: number, host = '127.0.0.1', timeoutMs = 1000): Promise<boolean> {
  return await new Promise(resolve => {
    const s = connect(port, host)
    const done = (open: boolean): void => { s.destroy(); resolve(open) }
    s.setTimeout(timeoutMs, () => done(false))
    s.once('connect', () => done(true))
    s.once('error', () => done(false))
  })
}

/** Polls until host:port accepts connections (up) or refuses them (down); throws after timeoutMs. */
export async function waitForPort (port: number, up: boolean, opts: { host?: string, timeoutMs?: number } = {}): Promise<void> {
  const host = opts.host ?? '127.0.0.1'
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000)
  while (Date.now() < deadline) {
    if (await isPortOpen(port, host) === up) return
    await sleep(25)
  }
  throw new Error(`port ${host}:${port} did not ${up ? 'open' : 'close'} in time`)
}
