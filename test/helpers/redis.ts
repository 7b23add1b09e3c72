// Private redis-server processes for tests: one per caller, on a free loopback port, no persistence.
import type { Redis } from 'ioredis'
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

/** Every key matching `pattern` on one server (SCAN, never KEYS). */
export async function scanKeys (redis: Redis, pattern = '*'): Promise<string[]> {
  const keys: string[] = []
  let cursor = '0'
  do {
    const [next, batch] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
    keys.push(...batch)
    cursor = next
  } while (cursor !== '0')
  return keys
}

/** Runs fn while the server is stopped, and starts it again afterwards (even when fn throws). */
export async function withRedisStopped<T> (server: TestRedis, fn: () => Promise<T>): Promise<T> {
  await server.stop()
  try {
    return await fn()
  } finally {
    await server.start()
  }
}
