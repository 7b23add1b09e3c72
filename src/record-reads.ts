// The token service's reads of a merchant's record, each remembered in the token cache: a shared
// load (one Redis read per merchant at a time in this process), and fresh reads that throw for a
// merchant that is gone (404) or must connect again (409).
import type { MerchantMeta, MerchantRecord, TokenStore } from './token-store.js'
import type { TokenCache } from './token-cache.js'
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

export function createRecordReads (store: TokenStore, cache: TokenCache, now: () => number): RecordReads {
  const loading = new Map<string, Promise<MerchantRecord | undefined>>()
  const isConnected = (r: MerchantMeta): boolean => effectiveStatus(r, now()).status === 'connected'

  async function readConnected (merchantId: string): Promise<MerchantRecord> {
    const fresh = await store.get(merchantId)
    if (fresh === undefined) {
      cache.forget(merchantId)
      throw new MerchantNotFoundError()
    }
    cache.remember(fresh)
    if (!isConnected(fresh)) throw new ReauthorizationRequiredError()
    return fresh
  }

  return {
    isConnected,
    async load (merchantId) {
      let p = loading.get(merchantId)
      if (p === undefined) {
        p = store.get(merchantId).then(r => r === undefined ? undefined : cache.remember(r)).finally(() => loading.delete(merchantId))
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
