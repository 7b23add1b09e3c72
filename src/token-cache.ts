// The in-process token cache: the last record read or written per merchant, with its access token
// as the frozen object every lookup hands out, and when it is due. Kept in step with the other
// replicas through the store's change messages (pub/sub `merchantId:version:grant`, `merchantId`
// on delete): a newer version or another grant drops the entry, so the next lookup re-reads Redis.
import type { RedisClient } from './redis-client.js'
import type { MerchantRecord } from './token-store.js'
import { refreshAt } from './refresh-policy.js'

export interface AccessToken {
  readonly merchantId: string
  readonly accessToken: string
  readonly tokenType: 'Bearer'
  readonly scope: string
  readonly expiresAt: number
}

interface Entry { record: MerchantRecord, refreshAt: number, token: AccessToken }

export interface TokenCache {
  /** The cached token while it is connected and not yet due (no Redis, no decryption). */
  peek: (merchantId: string) => AccessToken | undefined
  /** The cached record, if any. */
  record: (merchantId: string) => MerchantRecord | undefined
  /** Caches a record just read from or written to Redis (it replaces whatever is cached). */
  remember: (record: MerchantRecord) => MerchantRecord
  /** The token object of a record: the cached one when the record is the cached one. */
  tokenOf: (record: MerchantRecord) => AccessToken
  forget: (merchantId: string) => void
  /**
   * Subscribes to the change channel; `onChange` hears every merchant that changed. Changes
   * published while the subscriber was away are lost, so after a reconnect the whole cache is
   * dropped: once as soon as the connection is ready (before Redis counts the subscription again)
   * and once more when the subscription is active, for what was cached in between. Entries stay
   * until then: while Redis is down, cached tokens are still served.
   */
  listen: (subscriber: RedisClient, channel: string, onChange: (merchantId: string) => void) => Promise<void>
}

// Frozen: the object is handed to every caller and keys the routes' body cache.
const toAccessToken = (r: MerchantRecord): AccessToken => Object.freeze({
  merchantId: r.merchantId, accessToken: r.accessToken, tokenType: 'Bearer' as const, scope: r.scope, expiresAt: r.accessTokenExpiresAt
})

export function createTokenCache (now: () => number): TokenCache {
  const entries = new Map<string, Entry>()

  const invalidate = (message: string): string => {
    const [merchantId, v, grant] = message.split(':')
    const cached = entries.get(merchantId)
    // A message without a version (a delete) or one that cannot be read drops the entry.
    if (cached !== undefined && (v === undefined || !(cached.record.version >= Number(v)) || cached.record.grant !== grant)) entries.delete(merchantId)
    return merchantId
  }

  return {
    peek (merchantId) {
      const entry = entries.get(merchantId)
      return entry !== undefined && entry.record.status === 'connected' && now() < entry.refreshAt ? entry.token : undefined
    },
    record: (merchantId) => entries.get(merchantId)?.record,
    remember (record) {
      // Past its refresh token's expiry a merchant needs a new onboarding: no longer peeked then.
      const until = Math.min(refreshAt(record), record.refreshTokenExpiresAt)
      entries.set(record.merchantId, { record, refreshAt: until, token: toAccessToken(record) })
      return record
    },
    tokenOf (record) {
      const entry = entries.get(record.merchantId)
      return entry?.record === record ? entry.token : toAccessToken(record)
    },
    forget (merchantId) { entries.delete(merchantId) },
    async listen (subscriber, channel, onChange) {
      subscriber.on('message', (from: string, message: string) => { if (from === channel) onChange(invalidate(message)) })
      let connectedBefore = false
      subscriber.on('ready', () => {
        if (!connectedBefore) {
          connectedBefore = true
          return
        }
        entries.clear()
        subscriber.subscribe(channel).then(() => entries.clear(), () => {})
      })
      await subscriber.subscribe(channel)
    }
  }
}
