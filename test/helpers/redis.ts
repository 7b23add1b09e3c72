// Private redis-server processes for tests: one per caller, on a free loopback port, no persistence.
import { spawn, type ChildProcess } from 'node:child_process'
import { createServer, connect } from 'node:net'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

export async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number }
      srv.close(() => resolve(port))
    })
  })
}

async function waitForPort (port: number, up: boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    const open = await new Promise<boolean>(resolve => {
      const s = connect(port, '127.0.0.1')
      s.once('connect', () => { s.destroy(); resolve(true) })
      s.once('error', () => resolve(false))
    })
    if (open === up) return
    await sleep(25)
  }
  throw new Error(`redis on port ${port} did not come ${up ? 'up' : 'down'}`)
}

export interface TestRedis {
  port: number
  url: string
  /** Stop the server (SIGKILL unless graceful), keeping the port for start(). */
  stop: (graceful?: boolean) => Promise<void>
  /** Start it again on the same port (empty: nothing is persisted). */
  start: () => Promise<void>
  extraArgs: string[]
}

export async function startRedis (t: { teardown: (fn: () => unknown) => void }, extraArgs: string[] = []): Promise<TestRedis> {
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'cybs-redis-'))
  let proc: ChildProcess | undefined
  const start = async (): Promise<void> => {
    proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, ...extraArgs], { stdio: 'ignore' })
    await waitForPort(port, true)
  }
  const stop = async (graceful = false): Promise<void> => {
    if (proc === undefined || proc.exitCode !== null) return
    const p = proc
    const exited = new Promise(resolve => p.once('exit', resolve))
    p.kill(graceful ? 'SIGTERM' : 'SIGKILL')
    await exited
    await waitForPort(port, false)
  }
  await start()
  t.teardown(async () => {
    await stop()
    rmSync(dir, { recursive: true, force: true })
  })
  return { port, url: `redis://127.0.0.1:${port}`, stop, start, extraArgs }
}
