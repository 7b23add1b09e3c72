// The refresh policy, as pure functions of a record and the time: when an access token is due,
// whether it can still be served, what a merchant's status is right now, and what a failed
// refresh means. No I/O: the token service (src/token-service.ts) acts on these answers.
import type { CybsError } from './cybersource/errors.js'
import { TRANSIENT_OAUTH_ERRORS } from './cybersource/token-client.js'
import type { MerchantMeta } from './token-store.js'

/** A token handed out is valid for at least this long. */
export const MIN_VALIDITY_MS = 60_000
/** A token is refreshed in the background once about this share of its lifetime has passed… */
export const REFRESH_AT_FRACTION = 2 / 3
/** …give or take this share, per merchant and version, so a fleet does not refresh at once. */
export const REFRESH_JITTER_FRACTION = 0.1
/** After CyberSource failed for a merchant, lookups answer at once for this long instead of retrying. */
export const FAILURE_HOLD_MS = 1000

export type RefreshOutcome = 'ok' | 'rejected' | 'client_rejected' | 'unavailable' | 'protocol' | 'conflict'

type TokenTimes = Pick<MerchantMeta, 'merchantId' | 'version' | 'connectedAt' | 'lastRefreshedAt' | 'accessTokenExpiresAt'>

/** A stable number in [0, 1) from a string (FNV-1a), for jitter every replica agrees on. */
export function unitHash (s: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193)
  return (h >>> 0) / 0x100000000
}

/**
 * When the record's access token is due for a refresh. The jitter is a function of the merchant
 * and the record's version, so every replica and every call agrees on it, while merchants are
 * spread out; it is never later than MIN_VALIDITY_MS before expiry.
 */
export function refreshAt (r: TokenTimes): number {
  const issuedAt = r.lastRefreshedAt ?? r.connectedAt
  const lifetime = Math.max(0, r.accessTokenExpiresAt - issuedAt)
  const fraction = REFRESH_AT_FRACTION + (unitHash(`${r.merchantId}:${r.version}`) * 2 - 1) * REFRESH_JITTER_FRACTION
  return Math.min(issuedAt + lifetime * fraction, r.accessTokenExpiresAt - MIN_VALIDITY_MS)
}

/** Whether the access token may still be handed out (at least MIN_VALIDITY_MS left). */
export const isServable = (r: Pick<MerchantMeta, 'accessTokenExpiresAt'>, now: number): boolean =>
  r.accessTokenExpiresAt - now >= MIN_VALIDITY_MS

/** The status as of `now`: a connected merchant whose refresh token has expired needs a new onboarding. */
export function effectiveStatus<T extends MerchantMeta> (r: T, now: number): T {
  return r.status === 'connected' && r.refreshTokenExpiresAt <= now ? { ...r, status: 'reauthorization_required' } : r
}

/** OAuth errors that blame our own credentials, not the merchant's grant. */
const CLIENT_ERRORS = new Set(['invalid_client', 'unauthorized_client'])
/**
 * The OAuth error that means the merchant's grant is gone (revoked, expired, already rotated):
 * only this one marks the merchant. Any other rejection is ours or CyberSource's to fix.
 */
const GRANT_ERROR = 'invalid_grant'

export interface RefreshFailure {
  outcome: Exclude<RefreshOutcome, 'ok' | 'conflict'>
  /** The grant is gone: the merchant must authorize again (409). Otherwise: 503, merchant untouched. */
  reauthorize: boolean
  level: 'warn' | 'error'
  message: string
}

/** What a failed refresh means for the merchant, the metrics and the log. */
export function classifyRefreshError (err: CybsError): RefreshFailure {
  if (err.kind === 'rejected' && err.oauthError === GRANT_ERROR) {
    return { outcome: 'rejected', reauthorize: true, level: 'warn', message: 'refresh token rejected; the merchant must authorize again' }
  }
  const transient = err.kind === 'rejected' && TRANSIENT_OAUTH_ERRORS.has(err.oauthError ?? '')
  if (err.kind === 'rejected' && !transient) {
    return {
      outcome: 'client_rejected',
      reauthorize: false,
      level: 'error',
      message: CLIENT_ERRORS.has(err.oauthError ?? '')
        ? 'CyberSource rejected the partner credentials (check CYBS_CLIENT_ID, CYBS_CLIENT_SECRET and the client certificate)'
        : 'CyberSource rejected the refresh request with an unexpected OAuth error; the merchant is not marked'
    }
  }
  // Left: a transient OAuth error, no answer, or an answer that is not the token contract.
  const outcome = transient ? 'unavailable' : err.kind as 'unavailable' | 'protocol'
  return { outcome, reauthorize: false, level: 'warn', message: 'refresh failed; CyberSource unavailable' }
}
