// Private redis-server processes for tests (src/redis-server.ts): one per caller, on a free loopback
// port, with no persistence unless extraArgs ask for it.
import type { Redis } from 'ioredis'
import { freePort } from '../../src/net-utils.js'
import { createRedisClient, waitReady } from '../../src/redis-client.js'
import { startRedisServer } from '../../src/redis-server.js'

export { freePort }

export interface TestRedis {
  port: number
  url: string
  /** Stop the server (SIGKILL unless graceful), keeping the port for start(). */
  stop: (graceful?: boolean) => Promise<void>
  /** Start it again on the same port and directory (empty unless extraArgs turn persistence on). */
  start: () => Promise<void>
  extraArgs: string[]
}

export async function startRedis (t: { teardown: (fn: () => unknown) => void }, extraArgs: string[] = []): Promise<TestRedis> {
  const server = await startRedisServer({ args: ['--save', '', '--appendonly', 'no', ...extraArgs] })
  t.teardown(server.close)
  return { port: server.port, url: server.url, stop: server.stop, start: server.start, extraArgs }
}

/** A client with the service's own request-path settings (no offline queue, command timeout), ready. */
export async function serviceClient (t: { teardown: (fn: () => unknown) => void }, server: { url: string }): Promise<Redis> {
  const redis = createRedisClient({ mode: 'standalone', url: server.url }) as Redis
  redis.on('error', () => {})
  t.teardown(() => { redis.disconnect() })
  if (!await waitReady(redis, 5000)) throw new Error('redis did not become ready')
  return redis
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
