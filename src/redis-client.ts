// Builds the ioredis client from the config: standalone URL, Sentinel or Cluster, with
// request-path settings so a dead Redis gives fast errors instead of hung requests.
import { Redis, Cluster, type RedisOptions } from 'ioredis'
import type { RedisConfig } from './config.js'

export type RedisClient = Redis | Cluster

export const REDIS_COMMAND_TIMEOUT_MS = 1000

const requestPathOptions: RedisOptions = {
  commandTimeout: REDIS_COMMAND_TIMEOUT_MS,
  connectTimeout: 2000,
  maxRetriesPerRequest: 1,
  // No offline queue: while Redis is away, commands fail at once (503) instead of piling up.
  enableOfflineQueue: false,
  retryStrategy: (times) => Math.min(50 * 2 ** times, 1000)
}

export function createRedisClient (cfg: RedisConfig, overrides: RedisOptions = {}): RedisClient {
  const options = { ...requestPathOptions, ...overrides }
  switch (cfg.mode) {
    case 'cluster':
      return new Cluster(cfg.nodes, { redisOptions: options, enableOfflineQueue: options.enableOfflineQueue, clusterRetryStrategy: options.retryStrategy })
    case 'sentinel':
      return new Redis({ ...options, sentinels: cfg.sentinels, name: cfg.name })
    default:
      return new Redis(cfg.url, options)
  }
}

/** Resolves when the client is ready, or after timeoutMs (the service then starts degraded). */
export async function waitReady (client: RedisClient, timeoutMs: number): Promise<boolean> {
  if (client.status === 'ready') return true
  return await new Promise(resolve => {
    const timer = setTimeout(() => { client.off('ready', onReady); resolve(false) }, timeoutMs)
    const onReady = (): void => { clearTimeout(timer); resolve(true) }
    client.once('ready', onReady)
  })
}

/** A second connection for SUBSCRIBE; it keeps an offline queue so SUBSCRIBE is replayed after a reconnect. */
export function createSubscriber (client: RedisClient): RedisClient {
  return client instanceof Cluster
    ? client.duplicate(undefined, { enableOfflineQueue: true })
    : client.duplicate({ enableOfflineQueue: true })
}
