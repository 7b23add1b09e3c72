// Private redis-server processes for tests: one per caller, on a free loopback port, no persistence.
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort, waitForPort } from '../../src/net-utils.js'

export { freePort }

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
    if (proc === undefined || proc.exitCode !== null || proc.signalCode !== null) return
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
