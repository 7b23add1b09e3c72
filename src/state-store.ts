// Onboarding `state` values: 256 random bits, stored with STATE_TTL_SECONDS, consumed exactly once.
import { randomBytes } from 'node:crypto'
import type { Redis, Cluster } from 'ioredis'
import type { RedisKeys } from './redis-keys.js'
import { storageCall } from './storage-errors.js'

export interface StateRecord { merchantId?: string, createdAt: number }
export interface StateStore {
  create: (merchantId?: string) => Promise<{ state: string, expiresAt: Date }>
  /** Atomically fetches and deletes: of concurrent callers with one state, exactly one gets it. */
  consume: (state: string) => Promise<StateRecord | undefined>
}

const STATE_PATTERN = /^[A-Za-z0-9_-]{43}$/

export function createStateStore (redis: Redis | Cluster, keys: RedisKeys, opts: { ttlSeconds: number, now?: () => number }): StateStore {
  const now = opts.now ?? Date.now
  return {
    async create (merchantId) {
      const state = randomBytes(32).toString('base64url')
      const createdAt = now()
      const record: StateRecord = merchantId === undefined ? { createdAt } : { merchantId, createdAt }
      await storageCall(async () => await redis.set(keys.state(state), JSON.stringify(record), 'EX', opts.ttlSeconds, 'NX'))
      return { state, expiresAt: new Date(createdAt + opts.ttlSeconds * 1000) }
    },
    async consume (state) {
      if (!STATE_PATTERN.test(state)) return undefined
      const raw = await storageCall(async () => await redis.getdel(keys.state(state)))
      if (raw === null) return undefined
      const record = JSON.parse(raw) as StateRecord
      // Redis expiry is the bound; this guards a clock or TTL mishap all the same.
      return now() - record.createdAt <= opts.ttlSeconds * 1000 ? record : undefined
    }
  }
}
