// Merchant onboarding: builds the CyberSource authorize URL with a fresh state, and completes the
// callback (state consumed first, then exactly one code exchange, then the tokens stored).
import type { Logger } from 'pino'
import type { StateStore } from './state-store.js'
import type { TokenStore } from './token-store.js'
import type { TokenClient } from './cybersource/token-client.js'
import { isCybsError } from './cybersource/errors.js'
import { StorageUnavailableError } from './errors.js'
import { retryStorage } from './storage-errors.js'

export type FailureReason =
  | 'access_denied'
  | 'invalid_state'
  | 'exchange_failed'
  | 'upstream_unavailable'
  | 'merchant_mismatch'
  | 'storage_unavailable'

export type CallbackOutcome =
  | { ok: true, merchantId: string }
  | { ok: false, reason: FailureReason }

export interface Onboarding {
  start: (merchantId?: string) => Promise<{ url: string, expiresAt: Date }>
  complete: (params: { code?: string, state?: string }, log: Pick<Logger, 'info' | 'warn' | 'error'>) => Promise<CallbackOutcome>
}

export interface OnboardingOptions {
  authorizeUrl: string
  clientId: string
  redirectUrl: string
  stateStore: StateStore
  tokenStore: TokenStore
  tokenClient: TokenClient
  now?: () => number
  /** Delays between attempts to store freshly exchanged tokens while Redis blips. */
  storeRetryDelaysMs?: number[]
}

export function createOnboarding (opts: OnboardingOptions): Onboarding {
  const now = opts.now ?? Date.now
  const retryDelays = opts.storeRetryDelaysMs ?? [100, 400, 1000]

  return {
    async start (merchantId) {
      const { state, expiresAt } = await opts.stateStore.create(merchantId)
      const url = new URL(opts.authorizeUrl)
      url.searchParams.set('sub', 'oauth')
      url.searchParams.set('client_id', opts.clientId)
      url.searchParams.set('redirect_url', opts.redirectUrl)
      url.searchParams.set('state', state)
      return { url: url.href, expiresAt }
    },

    async complete ({ code, state }, log) {
      // CyberSource redirects a denial with no parameters at all.
      if (code === undefined && state === undefined) return { ok: false, reason: 'access_denied' }
      if (state === undefined || state === '') return { ok: false, reason: 'invalid_state' }
      // Consumed before the exchange: of concurrent callbacks with one state, one goes on.
      let bound
      try {
        bound = await opts.stateStore.consume(state)
      } catch (err) {
        if (!(err instanceof StorageUnavailableError)) throw err
        log.error({ err }, 'storage unavailable: the onboarding state cannot be checked')
        return { ok: false, reason: 'storage_unavailable' }
      }
      if (bound === undefined) return { ok: false, reason: 'invalid_state' }
      if (code === undefined || code === '') return { ok: false, reason: 'access_denied' }

      let tokens
      try {
        tokens = await opts.tokenClient.exchangeCode(code)
      } catch (err) {
        if (!isCybsError(err)) throw err
        log.warn({ correlation_id: err.correlationId, kind: err.kind, oauth_error: err.oauthError, status: err.status }, 'code exchange failed')
        return { ok: false, reason: err.kind === 'unavailable' ? 'upstream_unavailable' : 'exchange_failed' }
      }
      if (tokens.merchantId === undefined) {
        log.warn({ correlation_id: tokens.correlationId }, 'token has no readable merchant_id claim; tokens discarded')
        return { ok: false, reason: 'exchange_failed' }
      }
      if (bound.merchantId !== undefined && bound.merchantId !== tokens.merchantId) {
        log.warn({ merchant_id: bound.merchantId, authorized_merchant_id: tokens.merchantId }, 'onboarding bound to another merchant; tokens discarded')
        return { ok: false, reason: 'merchant_mismatch' }
      }

      const at = now()
      const record = {
        merchantId: tokens.merchantId,
        status: 'connected' as const,
        scope: tokens.scope,
        clientStatus: tokens.clientStatus,
        connectedAt: at,
        accessTokenExpiresAt: tokens.accessTokenExpiresAt,
        // The client always sets it for a code exchange (365 days when CyberSource does not say).
        refreshTokenExpiresAt: tokens.refreshTokenExpiresAt ?? at,
        lastRefreshedAt: null,
        accessToken: tokens.accessToken,
        refreshToken: tokens.refreshToken
      }
      // The code is spent: the tokens exist only in memory now, so a Redis blip is retried.
      try {
        await retryStorage(async () => await opts.tokenStore.put(record), retryDelays, attempt => {
          log.warn({ merchant_id: record.merchantId, attempt }, 'storing the tokens of a completed onboarding failed; retrying')
        })
      } catch (err) {
        log.error({ err, merchant_id: record.merchantId }, 'could not store the tokens of a completed onboarding; the merchant must connect again')
        if (err instanceof StorageUnavailableError) return { ok: false, reason: 'storage_unavailable' }
        throw err
      }
      log.info({ merchant_id: record.merchantId, correlation_id: tokens.correlationId, scope: tokens.scope }, 'merchant connected')
      return { ok: true, merchantId: record.merchantId }
    }
  }
}
