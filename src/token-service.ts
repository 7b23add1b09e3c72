// The one place that decides whether an access token is fresh, and the only caller of refresh.
//
// Freshness: a token is refreshed in the background once about two thirds of its lifetime have
// passed (jittered per merchant), and a lookup waits for a refresh only when the token has less
// than MIN_VALIDITY left. Single flight: one refresh promise per merchant in this process, and a
// Redis lock (SET NX PX, owner token, Lua compare-and-delete) across replicas; the others wait for
// the record's version to move (pub/sub, with polling as the fallback) and re-read it.
import { randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import type { RedisKeys } from './redis-keys.js'
import type { MerchantMeta, MerchantRecord, TokenStore } from './token-store.js'
import { TRANSIENT_OAUTH_ERRORS, type TokenClient } from './cybersource/token-client.js'
import { isCybsError, type CybsError } from './cybersource/errors.js'
import { retryBudgetMs, retryStorage, storageCall } from './storage-errors.js'
import { REDIS_COMMAND_TIMEOUT_MS, type RedisClient } from './redis-client.js'
import { MerchantNotFoundError, ReauthorizationRequiredError, StorageUnavailableError, UpstreamUnavailableError } from './errors.js'

export const MIN_VALIDITY_MS = 60_000
const REFRESH_AT_FRACTION = 2 / 3
const REFRESH_JITTER_FRACTION = 0.1
/** After CyberSource failed for a merchant, lookups answer at once for this long instead of retrying. */
const FAILURE_HOLD_MS = 1000
const POLL_MS = 100
/** OAuth errors that blame our own credentials, not the merchant's grant. */
const CLIENT_ERRORS = new Set(['invalid_client', 'unauthorized_client'])
/**
 * The OAuth error that means the merchant's grant is gone (revoked, expired, already rotated):
 * only this one marks the merchant. Any other rejection is ours or CyberSource's to fix.
 */
const GRANT_ERROR = 'invalid_grant'

export type RefreshOutcome = 'ok' | 'rejected' | 'client_rejected' | 'unavailable' | 'protocol' | 'conflict'

/** Hooks for metrics; every member optional. */
export interface TokenServiceEvents {
  refresh?: (outcome: RefreshOutcome, seconds: number) => void
  lockWait?: (seconds: number, outcome: 'updated' | 'acquired' | 'timeout') => void
}

export interface AccessToken {
  readonly merchantId: string
  readonly accessToken: string
  readonly tokenType: 'Bearer'
  readonly scope: string
  readonly expiresAt: number
}

export interface TokenService {
  /**
   * The hot path, synchronous: the cached token while it is not yet due for a refresh (no Redis,
   * no decryption), the same object for every call; undefined sends the caller to getAccessToken.
   */
  peekAccessToken: (merchantId: string) => AccessToken | undefined
  getAccessToken: (merchantId: string) => Promise<AccessToken>
  forceRefresh: (merchantId: string) => Promise<MerchantMeta>
  getStatus: (merchantId: string) => Promise<MerchantMeta>
  list: (limit: number, cursor?: string) => Promise<{ items: MerchantMeta[], nextCursor: string | null }>
  delete: (merchantId: string) => Promise<void>
  /** Counts stored merchants by status (a full SCAN: for metrics, not the request path). */
  countByStatus: () => Promise<Record<MerchantMeta['status'], number>>
  /** Subscribes to record changes of other replicas (cache invalidation, lock waits). */
  start: () => Promise<void>
  /** Waits for refreshes under way (their tokens get stored), then unsubscribes. */
  close: () => Promise<void>
}

export interface TokenServiceOptions {
  redis: RedisClient
  /** A connection for SUBSCRIBE (a duplicate of `redis`), owned by the service. */
  subscriber: RedisClient
  keys: RedisKeys
  store: TokenStore
  client: TokenClient
  log: Pick<Logger, 'info' | 'warn' | 'error'>
  events?: TokenServiceEvents
  now?: () => number
  /** Redis lock TTL; defaults to the token client's worst case plus a margin. */
  lockTtlMs?: number
  /** Delays between attempts to store refreshed tokens while Redis blips. */
  storeRetryDelaysMs?: number[]
}

interface CacheEntry { record: MerchantRecord, refreshAt: number, token: AccessToken }

/** A stable number in [0, 1) from a string (FNV-1a), for jitter every replica agrees on. */
function unitHash (s: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193)
  return (h >>> 0) / 0x100000000
}

// KEYS[1] lock; ARGV[1] owner, ARGV[2] ttl ms
const RENEW_SCRIPT = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`

// KEYS[1] lock; ARGV[1] owner
const RELEASE_SCRIPT = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`

export function createTokenService (opts: TokenServiceOptions): TokenService {
  const { redis, keys, store, client, log } = opts
  const now = opts.now ?? Date.now
  const events = opts.events ?? {}
  const storeRetryDelays = opts.storeRetryDelaysMs ?? [100, 250, 500, 1000, 2000, 4000]
  // The lock outlives the whole locked work: the CyberSource call with its retries, then the
  // store write with its retries (each attempt bounded by the Redis command timeout).
  const lockTtlMs = opts.lockTtlMs ?? client.maxRefreshMs + retryBudgetMs(storeRetryDelays, REDIS_COMMAND_TIMEOUT_MS) + 5000
  if (!('cybsReleaseLock' in redis)) {
    redis.defineCommand('cybsReleaseLock', { numberOfKeys: 1, lua: RELEASE_SCRIPT })
    redis.defineCommand('cybsRenewLock', { numberOfKeys: 1, lua: RENEW_SCRIPT })
  }
  const lockCommands = redis as unknown as {
    cybsReleaseLock: (key: string, owner: string) => Promise<number>
    cybsRenewLock: (key: string, owner: string, ttlMs: number) => Promise<number>
  }

  const cache = new Map<string, CacheEntry>()
  const inflight = new Map<string, Promise<MerchantRecord>>()
  const loading = new Map<string, Promise<MerchantRecord | undefined>>()
  const failedUntil = new Map<string, number>()
  const waiters = new Map<string, Set<() => void>>()
  let closing = false

  // The jitter is a function of the merchant and the record's version, so every replica and every
  // call agrees on when a given token is due, while merchants are spread out.
  const refreshAtOf = (r: MerchantRecord): number => {
    const issuedAt = r.lastRefreshedAt ?? r.connectedAt
    const lifetime = Math.max(0, r.accessTokenExpiresAt - issuedAt)
    const fraction = REFRESH_AT_FRACTION + (unitHash(`${r.merchantId}:${r.version}`) * 2 - 1) * REFRESH_JITTER_FRACTION
    return Math.min(issuedAt + lifetime * fraction, r.accessTokenExpiresAt - MIN_VALIDITY_MS)
  }
  // Frozen: the cached object is handed to every caller (and keys the routes' body cache).
  const toAccessToken = (r: MerchantRecord): AccessToken => Object.freeze({
    merchantId: r.merchantId, accessToken: r.accessToken, tokenType: 'Bearer' as const, scope: r.scope, expiresAt: r.accessTokenExpiresAt
  })
  // Every record passed here was just read from or written to Redis (one ordered connection per
  // key), so it replaces whatever is cached.
  const remember = (r: MerchantRecord): MerchantRecord => {
    cache.set(r.merchantId, { record: r, refreshAt: refreshAtOf(r), token: toAccessToken(r) })
    return r
  }
  /** The cached token object of a record when it is the cached one (stable for the routes). */
  const tokenOf = (r: MerchantRecord): AccessToken => {
    const entry = cache.get(r.merchantId)
    return entry?.record === r ? entry.token : toAccessToken(r)
  }
  const peek = (merchantId: string): AccessToken | undefined => {
    const entry = cache.get(merchantId)
    return entry !== undefined && entry.record.status === 'connected' && now() < entry.refreshAt ? entry.token : undefined
  }
  const forget = (merchantId: string): void => { cache.delete(merchantId) }
  const effectiveStatus = <T extends MerchantMeta>(r: T): T =>
    r.status === 'connected' && r.refreshTokenExpiresAt <= now() ? { ...r, status: 'reauthorization_required' } : r

  function onChange (message: string): void {
    const sep = message.lastIndexOf(':')
    const merchantId = sep < 0 ? message : message.slice(0, sep)
    const version = sep < 0 ? Infinity : Number(message.slice(sep + 1))
    const cached = cache.get(merchantId)
    if (cached !== undefined && !(cached.record.version >= version)) cache.delete(merchantId)
    for (const wake of waiters.get(merchantId) ?? []) wake()
  }

  async function load (merchantId: string): Promise<MerchantRecord | undefined> {
    let p = loading.get(merchantId)
    if (p === undefined) {
      p = store.get(merchantId).then(r => r === undefined ? undefined : remember(r)).finally(() => loading.delete(merchantId))
      loading.set(merchantId, p)
    }
    return await p
  }

  async function storeRefreshed (record: MerchantRecord, expectedVersion: number, lock: { key: string, owner: string }): Promise<number | undefined> {
    // CyberSource answered: these tokens exist only in memory until this write lands. The lock
    // is renewed first, so no other replica starts a second refresh while the write is retried.
    await storageCall(async () => await lockCommands.cybsRenewLock(lock.key, lock.owner, lockTtlMs)).catch(() => {})
    return await retryStorage(async () => await store.put(record, expectedVersion), storeRetryDelays, attempt => {
      log.warn({ merchant_id: record.merchantId, attempt }, 'storing refreshed tokens failed; retrying')
    })
  }

  async function refreshLocked (merchantId: string, force: boolean, seenVersion: number | undefined, lock: { key: string, owner: string }): Promise<MerchantRecord> {
    const current = await readConnected(merchantId)
    // Another replica refreshed while we queued for the lock: its result is ours.
    if (seenVersion !== undefined && current.version !== seenVersion && (force || current.accessTokenExpiresAt - now() >= MIN_VALIDITY_MS)) return current
    if (!force && now() < refreshAtOf(current)) return current

    const started = performance.now()
    const seconds = (): number => (performance.now() - started) / 1000
    let tokens
    try {
      tokens = await client.refresh(current.refreshToken)
    } catch (err) {
      if (!isCybsError(err)) throw err
      return await onRefreshError(err, current, seconds)
    }
    const record: MerchantRecord = {
      ...current,
      status: 'connected',
      scope: tokens.scope !== '' ? tokens.scope : current.scope,
      clientStatus: tokens.clientStatus !== '' ? tokens.clientStatus : current.clientStatus,
      accessToken: tokens.accessToken,
      refreshToken: tokens.refreshToken,
      accessTokenExpiresAt: tokens.accessTokenExpiresAt,
      refreshTokenExpiresAt: tokens.refreshTokenExpiresAt ?? current.refreshTokenExpiresAt,
      lastRefreshedAt: now()
    }
    const version = await storeRefreshed(record, current.version, lock)
    if (version === undefined) {
      // A newer pair was written meanwhile (a new onboarding): it wins, ours is dropped.
      events.refresh?.('conflict', seconds())
      return await servable(merchantId, false) ?? await refreshLocked(merchantId, force, undefined, lock)
    }
    events.refresh?.('ok', seconds())
    log.info({ merchant_id: merchantId, correlation_id: tokens.correlationId, version }, 'access token refreshed')
    return remember({ ...record, version })
  }

  async function onRefreshError (err: CybsError, current: MerchantRecord, seconds: () => number): Promise<MerchantRecord> {
    const merchantId = current.merchantId
    const fields = { merchant_id: merchantId, correlation_id: err.correlationId, kind: err.kind, oauth_error: err.oauthError, status: err.status }
    const transient = err.kind === 'rejected' && TRANSIENT_OAUTH_ERRORS.has(err.oauthError ?? '')
    if (err.kind === 'rejected' && err.oauthError === GRANT_ERROR) {
      events.refresh?.('rejected', seconds())
      log.warn(fields, 'refresh token rejected; the merchant must authorize again')
      const version = await store.markReauthorizationRequired(merchantId, current.version)
      if (version !== undefined) {
        remember({ ...current, status: 'reauthorization_required', version })
        throw new ReauthorizationRequiredError()
      }
      // A newer record was written meanwhile (a new onboarding): serve it if it can be.
      const newer = await servable(merchantId, false)
      if (newer !== undefined) return newer
      throw new ReauthorizationRequiredError()
    }
    if (err.kind === 'rejected' && !transient) {
      // Our client id, secret or certificate is wrong, or CyberSource answered an OAuth error we
      // do not expect: an operator problem, not the merchant's.
      events.refresh?.('client_rejected', seconds())
      log.error(fields, CLIENT_ERRORS.has(err.oauthError ?? '')
        ? 'CyberSource rejected the partner credentials (check CYBS_CLIENT_ID, CYBS_CLIENT_SECRET and the client certificate)'
        : 'CyberSource rejected the refresh request with an unexpected OAuth error; the merchant is not marked')
    } else {
      events.refresh?.(transient ? 'unavailable' : err.kind, seconds())
      log.warn(fields, 'refresh failed; CyberSource unavailable')
    }
    failedUntil.set(merchantId, now() + FAILURE_HOLD_MS)
    throw new UpstreamUnavailableError()
  }

  /** A fresh read of the record (cached); throws when it is gone or needs a new onboarding. */
  async function readConnected (merchantId: string): Promise<MerchantRecord> {
    const fresh = await store.get(merchantId)
    if (fresh === undefined) {
      forget(merchantId)
      throw new MerchantNotFoundError()
    }
    remember(fresh)
    if (effectiveStatus(fresh).status !== 'connected') throw new ReauthorizationRequiredError()
    return fresh
  }

  /**
   * A fresh read of the record when it can be served: connected and, unless `anyValidity`, with
   * at least MIN_VALIDITY_MS left; undefined when it needs a refresh. Throws for gone / reauthorization.
   */
  async function servable (merchantId: string, anyValidity: boolean): Promise<MerchantRecord | undefined> {
    const fresh = await readConnected(merchantId)
    return anyValidity || fresh.accessTokenExpiresAt - now() >= MIN_VALIDITY_MS ? fresh : undefined
  }

  async function waitForChange (merchantId: string, fromVersion: number, deadline: number): Promise<'updated' | 'free' | 'timeout'> {
    while (now() < deadline) {
      await new Promise<void>(resolve => {
        const set = waiters.get(merchantId) ?? new Set()
        waiters.set(merchantId, set)
        const wake = (): void => { clearTimeout(timer); set.delete(wake); resolve() }
        const timer = setTimeout(wake, POLL_MS)
        set.add(wake)
      })
      if (waiters.get(merchantId)?.size === 0) waiters.delete(merchantId)
      const [version, lockHeld] = await storageCall(async () => await Promise.all([
        redis.hget(keys.merchant(merchantId), 'version'),
        redis.exists(keys.lock(merchantId))
      ]))
      if (version === null || Number(version) !== fromVersion) return 'updated'
      if (lockHeld === 0) return 'free'
    }
    return 'timeout'
  }

  /** One refresh across replicas; resolves with the record to serve. */
  async function refreshAcrossReplicas (merchantId: string, force: boolean, seen: MerchantRecord | undefined): Promise<MerchantRecord> {
    const owner = randomBytes(16).toString('base64url')
    const lockKey = keys.lock(merchantId)
    const started = performance.now()
    const deadline = now() + lockTtlMs + 2000
    for (;;) {
      const acquired = await storageCall(async () => await redis.set(lockKey, owner, 'PX', lockTtlMs, 'NX'))
      if (acquired === 'OK') {
        if (seen !== undefined && performance.now() - started > 1) events.lockWait?.((performance.now() - started) / 1000, 'acquired')
        try {
          return await refreshLocked(merchantId, force, seen?.version, { key: lockKey, owner })
        } finally {
          await storageCall(async () => await lockCommands.cybsReleaseLock(lockKey, owner)).catch((err: unknown) => {
            log.warn({ err, merchant_id: merchantId }, 'could not release the refresh lock; it expires by itself')
          })
        }
      }
      const base = seen?.version ?? Number(await storageCall(async () => await redis.hget(keys.merchant(merchantId), 'version')) ?? -1)
      const waited = await waitForChange(merchantId, base, deadline)
      if (waited === 'updated') {
        events.lockWait?.((performance.now() - started) / 1000, 'updated')
        // The change may be a rejection (409) or a record that still needs a refresh: checked.
        const fresh = await servable(merchantId, force)
        if (fresh !== undefined) return fresh
        seen = cache.get(merchantId)?.record
        continue
      }
      if (waited === 'timeout') {
        events.lockWait?.((performance.now() - started) / 1000, 'timeout')
        throw new UpstreamUnavailableError()
      }
      // The holder finished without a new version (it failed, or it died and its lock expired): try again.
      if (seen === undefined) seen = await load(merchantId)
    }
  }

  // Forced and due refreshes are shared separately: a forced one never settles for a due one
  // that finds nothing to do (across replicas the lock still makes them one after the other).
  function refreshOnce (merchantId: string, force: boolean, seen: MerchantRecord | undefined): Promise<MerchantRecord> {
    const key = `${force ? 'force' : 'due'}:${merchantId}`
    let p = inflight.get(key)
    if (p === undefined) {
      p = refreshAcrossReplicas(merchantId, force, seen).finally(() => inflight.delete(key))
      inflight.set(key, p)
    }
    return p
  }

  return {
    peekAccessToken: peek,

    async getAccessToken (merchantId) {
      // Hot path: no Redis, no decryption.
      const hot = peek(merchantId)
      if (hot !== undefined) return hot
      const entry = cache.get(merchantId)
      const t = now()

      // A cached merchant that cannot be served is re-read: a new onboarding must lift a
      // reauthorization even when its change message was lost (subscriber reconnecting).
      const record = entry !== undefined && effectiveStatus(entry.record).status === 'connected' ? entry.record : await load(merchantId)
      if (record === undefined) throw new MerchantNotFoundError()
      if (effectiveStatus(record).status !== 'connected') throw new ReauthorizationRequiredError()
      const stillValid = record.accessTokenExpiresAt - t >= MIN_VALIDITY_MS
      if (t < refreshAtOf(record) && stillValid) return tokenOf(record)
      if ((failedUntil.get(merchantId) ?? 0) > t) {
        if (stillValid) return tokenOf(record)
        throw new UpstreamUnavailableError()
      }
      if (stillValid) {
        // Ahead of expiry: refresh in the background, serve the current token now.
        if (!closing) {
          refreshOnce(merchantId, false, record).catch((err: unknown) => {
            if (err instanceof StorageUnavailableError) failedUntil.set(merchantId, now() + FAILURE_HOLD_MS)
            else if (!(err instanceof UpstreamUnavailableError || err instanceof ReauthorizationRequiredError)) log.warn({ err, merchant_id: merchantId }, 'background refresh failed')
          })
        }
        return tokenOf(record)
      }
      return tokenOf(await refreshOnce(merchantId, false, record))
    },

    async forceRefresh (merchantId) {
      const seen = await load(merchantId)
      if (seen === undefined) throw new MerchantNotFoundError()
      return effectiveStatus(await refreshOnce(merchantId, true, seen))
    },

    async getStatus (merchantId) {
      const meta = await store.getMeta(merchantId)
      if (meta === undefined) throw new MerchantNotFoundError()
      return effectiveStatus(meta)
    },

    async list (limit, cursor) {
      const page = await store.list(limit, cursor)
      return { items: page.items.map(effectiveStatus), nextCursor: page.nextCursor }
    },

    async delete (merchantId) {
      forget(merchantId)
      if (!await store.delete(merchantId)) throw new MerchantNotFoundError()
    },

    async countByStatus () {
      const counts = { connected: 0, reauthorization_required: 0 }
      let cursor: string | undefined
      do {
        const page = await store.list(500, cursor)
        for (const m of page.items) counts[effectiveStatus(m).status]++
        cursor = page.nextCursor ?? undefined
      } while (cursor !== undefined)
      return counts
    },

    async start () {
      opts.subscriber.on('message', (channel: string, message: string) => { if (channel === keys.events) onChange(message) })
      // Changes published while the subscriber was away are lost: when it is back after a
      // reconnect, the whole cache is dropped, so every merchant is re-read from Redis; once as
      // soon as the connection is ready (before Redis counts the subscription again) and once
      // more when the subscription is active, for what was cached in between. (Entries stay
      // until then: while Redis is down, cached tokens are still served.)
      let connectedBefore = false
      opts.subscriber.on('ready', () => {
        if (!connectedBefore) {
          connectedBefore = true
          return
        }
        cache.clear()
        opts.subscriber.subscribe(keys.events).then(() => cache.clear(), () => {})
      })
      await opts.subscriber.subscribe(keys.events)
    },

    async close () {
      closing = true
      await Promise.allSettled([...inflight.values()])
      opts.subscriber.disconnect()
    }
  }
}
