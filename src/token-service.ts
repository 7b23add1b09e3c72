// Fresh access tokens: the one caller of refresh. It composes the refresh policy (when a token is
// due, what a failure means: src/refresh-policy.ts), the token cache (src/token-cache.ts: access
// tokens only; records, refresh tokens included, are read from Redis when a refresh needs them)
// and the refresh lock across replicas (src/refresh-lock.ts), with single flight in this process:
// one load and one refresh promise per merchant. A lookup waits for a refresh only when its token
// has less than MIN_VALIDITY_MS left; ahead of that, the refresh runs in the background.
import type { Logger } from 'pino'
import type { EventSink } from './event-log.js'
import type { Expected, MerchantMeta, MerchantRecord, TokenStore } from './token-store.js'
import type { TokenClient } from './cybersource/token-client.js'
import { CybsError, isCybsError } from './cybersource/errors.js'
import { retryStorage } from './storage-errors.js'
import type { RedisClient } from './redis-client.js'
import type { RedisKeys } from './redis-keys.js'
import { MerchantNotFoundError, ReauthorizationRequiredError, StorageUnavailableError, UpstreamUnavailableError } from './errors.js'
import { FAILURE_HOLD_MS, MIN_VALIDITY_MS, classifyRefreshError, effectiveStatus, isServable, refreshAt, type RefreshOutcome } from './refresh-policy.js'
import { createTokenCache, type AccessToken } from './token-cache.js'
import { createRefreshLock, type LockHandle } from './refresh-lock.js'
import { createRecordReads, createVersionReads } from './record-reads.js'
import { createRefreshReporter } from './refresh-reporter.js'

export type { AccessToken } from './token-cache.js'
export type { RefreshOutcome } from './refresh-policy.js'
export { MIN_VALIDITY_MS } from './refresh-policy.js'

/** Hooks for metrics; every member optional. */
export interface TokenServiceEvents {
  refresh?: (outcome: RefreshOutcome, seconds: number) => void
  lockWait?: (seconds: number, outcome: 'updated' | 'acquired' | 'timeout') => void
}

export interface TokenService {
  /**
   * The hot path, synchronous: the cached token while it is not yet due for a refresh (no Redis,
   * no decryption), the same object for every call; undefined sends the caller to getAccessToken.
   */
  peekAccessToken: (merchantId: string) => AccessToken | undefined
  getAccessToken: (merchantId: string) => Promise<AccessToken>
  forceRefresh: (merchantId: string) => Promise<MerchantMeta>
  /** Forgets the merchant here and deletes every key of it (404 when there was none). */
  delete: (merchantId: string) => Promise<void>
  /** Subscribes to record changes of other replicas (cache invalidation, lock waits). */
  start: () => Promise<void>
  /** Merchants whose access token is cached (for metrics). */
  cacheSize: () => number
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
  /** The partner's lifecycle events (refreshed, refresh_failed, reauthorization_required, disconnected). */
  lifecycle?: EventSink
  now?: () => number
  /** Refresh lock TTL (renewed while a refresh runs); LOCK_TTL_MS by default. */
  lockTtlMs?: number
  /**
   * The most a lookup or forced refresh waits for an answer (CYBS_TIMEOUT_MS + 2 s in the app);
   * a refresh that takes longer goes on in the background, and its result is stored.
   */
  answerWithinMs: number
  /** Delays between attempts to store refreshed tokens while Redis blips. */
  storeRetryDelaysMs?: number[]
  /** Merchants whose access token is kept in memory (TOKEN_CACHE_MAX_ENTRIES; 0: none). */
  maxEntries: number
}

/** The tokens a caller saw: what counts as renewed, and the version to wait from. */
type Seen = Pick<MerchantRecord, 'accessToken' | 'version'>

export function createTokenService (opts: TokenServiceOptions): TokenService {
  const { store, client, log } = opts
  const now = opts.now ?? Date.now
  const events = opts.events ?? {}
  const storeRetryDelays = opts.storeRetryDelaysMs ?? [100, 250, 500, 1000, 2000, 4000]
  const lock = createRefreshLock({ redis: opts.redis, keys: opts.keys, now, ttlMs: opts.lockTtlMs })
  const cache = createTokenCache({ now, maxEntries: opts.maxEntries })
  const { isConnected, load, readConnected, servable } = createRecordReads(store, cache, now)
  const inflight = new Map<string, Promise<MerchantRecord>>()
  const report = createRefreshReporter(opts.lifecycle, now)
  const failedUntil = new Map<string, number>()
  let closing = false

  async function storeRefreshed (record: MerchantRecord, expected: Expected, held: LockHandle): Promise<number | undefined> {
    // CyberSource answered: these tokens exist only in memory until this write lands. The lock
    // is renewed first, so no other replica starts a second refresh while the write is retried.
    await lock.renew(held).catch(() => {})
    return await retryStorage(async () => await store.put(record, expected), storeRetryDelays, attempt => {
      log.warn({ merchant_id: record.merchantId, attempt }, 'storing refreshed tokens failed; retrying')
    })
  }

  /** Whether `current` holds other tokens than `seen`: a refresh (or an onboarding) happened since. */
  const renewedSince = (current: MerchantRecord, seen: Seen | undefined): boolean =>
    seen !== undefined && current.accessToken !== seen.accessToken

  async function refreshLocked (merchantId: string, force: boolean, seen: Seen | undefined, held: LockHandle): Promise<MerchantRecord> {
    const current = await readConnected(merchantId)
    // Another replica refreshed while we queued for the lock: its result is ours. Another write
    // (a key rotation, a status change) is not a refresh: a forced refresh still happens.
    if (renewedSince(current, seen) && (force || isServable(current, now()))) return current
    if (!force && now() < refreshAt(current)) return current

    const started = performance.now()
    const seconds = (): number => (performance.now() - started) / 1000
    let tokens
    try {
      tokens = await client.refresh(current.refreshToken)
      // Tokens for another merchant (or none named) are never stored under this one.
      if (tokens.merchantId !== merchantId) throw new CybsError('protocol', 'token response names another merchant', tokens.correlationId, 200)
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
    const ticket = cache.ticket()
    const version = await storeRefreshed(record, current, held)
    if (version === undefined) {
      // A newer pair was written meanwhile (a new onboarding), or the merchant was deleted: it
      // wins, ours is dropped.
      events.refresh?.('conflict', seconds())
      return await servable(merchantId, false) ?? await refreshLocked(merchantId, force, undefined, held)
    }
    events.refresh?.('ok', seconds())
    report.refreshed(merchantId, record)
    log.info({ merchant_id: merchantId, correlation_id: tokens.correlationId, version }, 'access token refreshed')
    failedUntil.delete(merchantId)
    const stored = { ...record, version }
    cache.remember(stored, ticket)
    return stored
  }

  async function onRefreshError (err: CybsError, current: MerchantRecord, seconds: () => number): Promise<MerchantRecord> {
    const merchantId = current.merchantId
    const failure = classifyRefreshError(err)
    events.refresh?.(failure.outcome, seconds())
    log[failure.level]({ merchant_id: merchantId, correlation_id: err.correlationId, kind: err.kind, oauth_error: err.oauthError, status: err.status }, failure.message)
    if (failure.reauthorize) {
      const version = await store.markReauthorizationRequired(merchantId, current)
      if (version !== undefined) {
        cache.forget(merchantId)
        report.reauthorizationRequired(merchantId, err.oauthError ?? failure.outcome)
        throw new ReauthorizationRequiredError()
      }
      // A newer record was written meanwhile (a new onboarding): serve it if it can be.
      const newer = await servable(merchantId, false)
      if (newer !== undefined) return newer
      throw new ReauthorizationRequiredError()
    }
    report.failed(merchantId, failure.outcome)
    failedUntil.set(merchantId, now() + FAILURE_HOLD_MS)
    throw new UpstreamUnavailableError()
  }

  /** One refresh across replicas; resolves with the record to serve. */
  async function refreshAcrossReplicas (merchantId: string, force: boolean, seen: Seen | undefined): Promise<MerchantRecord> {
    const started = performance.now()
    const waited = (): number => (performance.now() - started) / 1000
    const deadline = now() + opts.answerWithinMs
    // `seen`: the tokens the caller saw (what counts as renewed); `known`: the last record read.
    let known = seen
    for (;;) {
      const held = await lock.acquire(merchantId)
      if (held !== undefined) {
        if (seen !== undefined && performance.now() - started > 1) events.lockWait?.(waited(), 'acquired')
        const stopRenewing = lock.keepAlive(held, () => {
          // Still safe: the write is compare-and-set on version and grant.
          log.warn({ merchant_id: merchantId }, 'the refresh lock was lost while refreshing')
        })
        try {
          return await refreshLocked(merchantId, force, seen, held)
        } finally {
          stopRenewing()
          await lock.release(held).catch((err: unknown) => {
            log.warn({ err, merchant_id: merchantId }, 'could not release the refresh lock; it expires by itself')
          })
        }
      }
      const base = known?.version ?? await store.version(merchantId) ?? -1
      const outcome = await lock.waitForHolder(merchantId, base, deadline, store.version)
      if (outcome === 'updated') {
        events.lockWait?.(waited(), 'updated')
        // The change may be a rejection (409), a record that still needs a refresh, or a write
        // that was not a refresh (a forced refresh then still needs its own): checked.
        const fresh = await readConnected(merchantId)
        if ((force || isServable(fresh, now())) && (!force || renewedSince(fresh, seen))) return fresh
        known = fresh
        if (!force) seen = known
        continue
      }
      if (outcome === 'timeout') {
        events.lockWait?.(waited(), 'timeout')
        throw new UpstreamUnavailableError()
      }
      // The holder finished without a new version (it failed, or it died and its lock expired): try again.
      if (seen === undefined) seen = known = await load(merchantId)
    }
  }

  // Forced and due refreshes are shared separately: a forced one never settles for a due one
  // that finds nothing to do (across replicas the lock still makes them one after the other).
  function refreshOnce (merchantId: string, force: boolean, seen: Seen | undefined): Promise<MerchantRecord> {
    const key = `${force ? 'force' : 'due'}:${merchantId}`
    let p = inflight.get(key)
    if (p === undefined) {
      p = refreshAcrossReplicas(merchantId, force, seen).finally(() => inflight.delete(key))
      inflight.set(key, p)
    }
    return p
  }

  function refreshInBackground (merchantId: string, seen: Seen): void {
    if (closing) return
    refreshOnce(merchantId, false, seen).catch((err: unknown) => {
      if (err instanceof StorageUnavailableError) failedUntil.set(merchantId, now() + FAILURE_HOLD_MS)
      else if (!(err instanceof UpstreamUnavailableError || err instanceof ReauthorizationRequiredError)) log.warn({ err, merchant_id: merchantId }, 'background refresh failed')
    })
  }

  /** The answer, or 503 once answerWithinMs have passed (the work itself goes on). */
  async function within<T> (work: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new UpstreamUnavailableError()), opts.answerWithinMs)
    })
    try {
      return await Promise.race([work, late])
    } finally {
      clearTimeout(timer)
    }
  }

  async function lookup (merchantId: string): Promise<AccessToken> {
    const t = now()
    const cached = cache.entry(merchantId)
    if (cached !== undefined && t < cached.connectedUntil) {
      return await answer(merchantId, cached.token, cached.freshUntil, { accessToken: cached.token.accessToken, version: cached.version }, t)
    }
    // Only connected merchants are cached: a new onboarding lifts a reauthorization even when its
    // change message was lost (subscriber reconnecting).
    const record = await load(merchantId)
    if (record === undefined) throw new MerchantNotFoundError()
    if (!isConnected(record)) throw new ReauthorizationRequiredError()
    return await answer(merchantId, cache.tokenOf(record), refreshAt(record), record, t)
  }

  /** The token of a connected merchant, due at `dueAt`: now, or after a refresh. */
  async function answer (merchantId: string, token: AccessToken, dueAt: number, seen: Seen, t: number): Promise<AccessToken> {
    const stillValid = token.expiresAt - t >= MIN_VALIDITY_MS
    if (t < dueAt && stillValid) return token
    const hold = failedUntil.get(merchantId)
    if (hold !== undefined && hold > t) {
      if (stillValid) return token
      throw new UpstreamUnavailableError()
    }
    if (hold !== undefined) failedUntil.delete(merchantId)
    if (stillValid) {
      // Ahead of expiry: refresh in the background, serve the current token now.
      refreshInBackground(merchantId, seen)
      return token
    }
    return cache.tokenOf(await refreshOnce(merchantId, false, seen))
  }

  async function forceRefresh (merchantId: string): Promise<MerchantMeta> {
    const seen = await load(merchantId)
    if (seen === undefined) throw new MerchantNotFoundError()
    return effectiveStatus(await refreshOnce(merchantId, true, seen), now())
  }

  return {
    peekAccessToken: cache.peek,

    async getAccessToken (merchantId) {
      return cache.peek(merchantId) ?? await within(lookup(merchantId))
    },

    async forceRefresh (merchantId) {
      return await within(forceRefresh(merchantId))
    },

    async delete (merchantId) {
      cache.forget(merchantId)
      const deleted = await store.delete(merchantId)
      // Again: a read that was under way at the delete may have cached the record meanwhile.
      cache.forget(merchantId)
      if (!deleted) throw new MerchantNotFoundError()
      report.disconnected(merchantId)
    },

    async start () {
      await cache.listen(opts.subscriber, opts.keys.events, lock.notify, createVersionReads(opts.redis, opts.keys))
    },

    cacheSize: cache.size,

    async close () {
      closing = true
      // Refreshes may start while others end (the last requests, keep-alive's last renewals).
      while (inflight.size > 0) await Promise.allSettled([...inflight.values()])
      cache.stop()
      opts.subscriber.disconnect()
    }
  }
}
