// The in-process token cache: per merchant, only what a lookup answers (the access token as the
// frozen object every lookup hands out, when it is due, and the record's version and grant);
// never a refresh token nor a whole record. Bounded: past maxEntries the least recently used
// merchant goes (0: nothing is cached). Kept in step with the other replicas by the store's change
// messages (`merchantId:version:grant`, `merchantId` on delete): a newer version or another grant
// drops the entry. Messages published while the subscriber was away are lost: after a reconnect
// the entries are revalidated against Redis (src/cache-revalidation.ts), not dropped.
import { LRUCache } from 'lru-cache'
import type { RedisClient } from './redis-client.js'
import type { Expected, MerchantRecord } from './token-store.js'
import { refreshAt } from './refresh-policy.js'
import { createRevalidation, type ReadVersions } from './cache-revalidation.js'

export interface AccessToken {
  readonly merchantId: string
  readonly accessToken: string
  readonly tokenType: 'Bearer'
  readonly scope: string
  readonly expiresAt: number
}

export interface CachedToken {
  readonly token: AccessToken
  /** Until when it is served without a thought: its refresh point, or its refresh token's expiry if earlier. */
  readonly freshUntil: number
  /** The refresh token's expiry: past it, the merchant must connect again. */
  readonly connectedUntil: number
  readonly version: number
  readonly grant: string
  /** The subscription epoch in which it was known current; -1 until it is revalidated. */
  epoch: number
}

/** A subscription epoch (src/cache-revalidation.ts). */
export type Ticket = number

/** Taken before the Redis read or write whose record is then remembered (see TokenCache.ticket). */
export interface ReadTicket {
  epoch: Ticket
  /** How many change messages had been heard. */
  heard: number
}

export interface TokenCache {
  /** The cached token while it is not yet due (no Redis, no decryption). */
  peek: (merchantId: string) => AccessToken | undefined
  /** The cached entry, if any. */
  entry: (merchantId: string) => CachedToken | undefined
  /**
   * Where the change subscription stands now. A record remembered with a ticket taken before a
   * disconnect (or while away) may have missed a change message: it is revalidated. One whose
   * merchant changed (a message heard) after the ticket was taken is not cached at all.
   */
  ticket: () => ReadTicket
  /** Caches a connected record read from or written to Redis; any other status is forgotten. */
  remember: (record: MerchantRecord, ticket: ReadTicket) => void
  /** The token object of a record: the cached one when the record is the cached version. */
  tokenOf: (record: MerchantRecord) => AccessToken
  forget: (merchantId: string) => void
  size: () => number
  /**
   * Subscribes to the change channel; `onChange` hears every merchant that changed. After a
   * reconnect, once the subscription is active again, every entry not known current is checked
   * with `readVersions` and dropped if its record changed or is gone. Until then entries are
   * still served (while Redis is down, cached tokens are).
   */
  listen: (subscriber: RedisClient, channel: string, onChange: (merchantId: string) => void, readVersions: ReadVersions) => Promise<void>
  /** Stops revalidating (the subscriber is being closed). */
  stop: () => void
}

/**
 * A copy that shares no memory with its source: a string cut from a larger one (both tokens
 * decrypted as one plaintext) would keep the whole of it, refresh token included, alive.
 */
const own = (s: string): string => Buffer.from(s, 'utf8').toString('utf8')

// Merchants mostly share a few scopes: one string each instead of one per merchant read.
const scopes = new Map<string, string>()
const MAX_SCOPES = 64
function shared (scope: string): string {
  const known = scopes.get(scope)
  if (known !== undefined) return known
  const copy = own(scope)
  if (scopes.size < MAX_SCOPES) scopes.set(copy, copy)
  return copy
}

// Frozen: the object is handed to every caller and keys the routes' body cache.
const toAccessToken = (r: MerchantRecord, merchantId = r.merchantId): AccessToken => Object.freeze({
  merchantId, accessToken: own(r.accessToken), tokenType: 'Bearer' as const, scope: shared(r.scope), expiresAt: r.accessTokenExpiresAt
})

const sameRecord = (e: CachedToken, r: Expected): boolean => e.version === r.version && e.grant === r.grant

export function createTokenCache (opts: { now: () => number, maxEntries: number }): TokenCache {
  const { now, maxEntries } = opts
  // lru-cache needs a positive bound; with maxEntries 0 nothing is ever set.
  const lru = new LRUCache<string, CachedToken>({ max: Math.max(1, maxEntries) })
  const sync = createRevalidation(lru)
  // The change messages heard, and when each recently changed merchant last changed: a read that
  // began before a change (a delete, a newer write) and answers after its message is not cached.
  let heard = 0
  const changes = new LRUCache<string, { heard: number, version?: number, grant?: string }>({ max: 10_000 })

  const invalidate = (message: string): string => {
    const [merchantId, v, grant] = message.split(':')
    changes.set(merchantId, { heard: ++heard, version: v === undefined ? undefined : Number(v), grant })
    const cached = lru.peek(merchantId)
    // A message without a version (a delete) or one that cannot be read drops the entry.
    if (cached !== undefined && (v === undefined || !(cached.version >= Number(v)) || cached.grant !== grant)) lru.delete(merchantId)
    return merchantId
  }

  return {
    peek (merchantId) {
      const entry = lru.get(merchantId)
      return entry !== undefined && now() < entry.freshUntil ? entry.token : undefined
    },
    entry: (merchantId) => lru.get(merchantId),
    ticket: () => ({ epoch: sync.ticket(), heard }),
    remember (record, ticket) {
      // A request's merchant id may be cut from its URL: the cache keeps a copy of its own.
      const id = own(record.merchantId)
      if (record.status !== 'connected' || record.refreshTokenExpiresAt <= now()) {
        lru.delete(id)
        return
      }
      if (maxEntries === 0) return
      // Changed since this record was read, and not into this record (its own write's message is):
      // it may be the older one, or deleted; the next lookup reads again.
      const change = changes.get(id)
      if (change !== undefined && change.heard > ticket.heard && !(change.version === record.version && change.grant === record.grant)) return
      const cached = lru.peek(id)
      // The same record again keeps its token object; an older one of the same grant (a read that
      // crossed a newer write) is not cached over the newer.
      if (cached !== undefined && cached.grant === record.grant && cached.version >= record.version) {
        if (cached.version === record.version) sync.vouch(id, cached, ticket.epoch)
        return
      }
      // Past its refresh token's expiry a merchant needs a new onboarding: no longer fresh then.
      const entry: CachedToken = {
        token: toAccessToken(record, id),
        freshUntil: Math.min(refreshAt(record), record.refreshTokenExpiresAt),
        connectedUntil: record.refreshTokenExpiresAt,
        version: record.version,
        grant: record.grant,
        epoch: -1
      }
      lru.set(id, entry)
      sync.vouch(id, entry, ticket.epoch)
    },
    tokenOf (record) {
      const entry = lru.peek(record.merchantId)
      return entry !== undefined && sameRecord(entry, record) && entry.token.accessToken === record.accessToken ? entry.token : toAccessToken(record)
    },
    forget (merchantId) { lru.delete(merchantId) },
    size: () => lru.size,
    async listen (subscriber, channel, onChange, readVersions) {
      subscriber.on('message', (from: string, message: string) => { if (from === channel) onChange(invalidate(message)) })
      await sync.follow(subscriber, channel, readVersions)
    },
    stop: sync.stop
  }
}
