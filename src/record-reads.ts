// The token service's reads of merchants' records: a shared load (one Redis read per merchant at a
// time in this process), fresh reads that throw for a merchant that is gone (404) or must connect
// again (409), each remembered in the token cache; and the versions and grants the cache is
// revalidated against (pipelined HMGET, no decryption).
import { Cluster } from 'ioredis'
import type { Expected, MerchantMeta, MerchantRecord, TokenStore } from './token-store.js'
import type { TokenCache } from './token-cache.js'
import type { ReadVersions } from './cache-revalidation.js'
import type { RedisClient } from './redis-client.js'
import type { RedisKeys } from './redis-keys.js'
import { storageCall } from './storage-errors.js'
import { effectiveStatus, isServable } from './refresh-policy.js'
import { MerchantNotFoundError, ReauthorizationRequiredError } from './errors.js'

export interface RecordReads {
  /** Connected as of now (a refresh token past its expiry is not). */
  isConnected: (r: MerchantMeta) => boolean
  /** The record, read once for all concurrent callers; undefined when there is none. */
  load: (merchantId: string) => Promise<MerchantRecord | undefined>
  /** A fresh read; throws when the merchant is gone or must connect again. */
  readConnected: (merchantId: string) => Promise<MerchantRecord>
  /**
   * A fresh read when it can be served: connected and, unless `anyValidity`, with enough
   * validity left; undefined when it needs a refresh.
   */
  servable: (merchantId: string, anyValidity: boolean) => Promise<MerchantRecord | undefined>
}

const toExpected = (reply: Array<string | null>): Expected | undefined =>
  reply[0] === null ? undefined : { version: Number(reply[0]), grant: reply[1] ?? '' }

/** The version and grant of each merchant's record (undefined: none), in one round trip per node. */
export function createVersionReads (redis: RedisClient, keys: RedisKeys): ReadVersions {
  const args = (id: string): [string, string, string] => [keys.merchant(id), 'version', 'grant']
  return async (merchantIds) => await storageCall(async () => {
    // A Cluster pipeline must stay within one slot: there, one command per merchant.
    if (redis instanceof Cluster) return await Promise.all(merchantIds.map(async id => toExpected(await redis.hmget(...args(id)))))
    const replies = await redis.pipeline(merchantIds.map(id => ['hmget', ...args(id)])).exec()
    if (replies === null) throw new Error('the pipeline was discarded')
    return replies.map(([err, reply]) => {
      if (err !== null) throw err
      return toExpected(reply as Array<string | null>)
    })
  })
}

export function createRecordReads (store: TokenStore, cache: TokenCache, now: () => number): RecordReads {
  const loading = new Map<string, Promise<MerchantRecord | undefined>>()
  const isConnected = (r: MerchantMeta): boolean => effectiveStatus(r, now()).status === 'connected'

  async function readConnected (merchantId: string): Promise<MerchantRecord> {
    const ticket = cache.ticket()
    const fresh = await store.get(merchantId)
    if (fresh === undefined) {
      cache.forget(merchantId)
      throw new MerchantNotFoundError()
    }
    cache.remember(fresh, ticket)
    if (!isConnected(fresh)) throw new ReauthorizationRequiredError()
    return fresh
  }

  async function read (merchantId: string): Promise<MerchantRecord | undefined> {
    const ticket = cache.ticket()
    const r = await store.get(merchantId)
    if (r !== undefined) cache.remember(r, ticket)
    return r
  }

  return {
    isConnected,
    async load (merchantId) {
      let p = loading.get(merchantId)
      if (p === undefined) {
        p = read(merchantId).finally(() => loading.delete(merchantId))
        loading.set(merchantId, p)
      }
      return await p
    },
    readConnected,
    async servable (merchantId, anyValidity) {
      const fresh = await readConnected(merchantId)
      return anyValidity || isServable(fresh, now()) ? fresh : undefined
    }
  }
}
