// Merchant onboarding: builds the CyberSource authorize URL with a fresh state bound to the
// browser, and completes the callback (browser checked and state consumed first, then exactly one
// code exchange, then the tokens stored, then the outcome kept for the link and for a reload).
import type { Logger } from 'pino'
import { setTimeout as sleep } from 'node:timers/promises'
import { hashBinding, type StateRecord, type StateStore } from './state-store.js'
import type { Link, LinkStore } from './link-store.js'
import type { EventData, EventSink } from './event-log.js'
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
  | 'browser_mismatch'

export type CallbackOutcome =
  | { ok: true, merchantId: string }
  | { ok: false, reason: FailureReason }

export interface CallbackResult {
  outcome: CallbackOutcome
  /** The onboarding link the state was started from. */
  linkId?: string
  /** The support reference of the first answer: a reload shows the same one. */
  reference: string
  /** A reload by the browser that used the state: the first outcome again, nothing exchanged. */
  replayed: boolean
  /** The state was started by another browser (counted even when binding is off). */
  bindingMismatch: boolean
}

interface Settled { outcome: CallbackOutcome, reference: string, linkId?: string }

export interface Onboarding {
  /** A fresh state bound to the browser's binding value (and to a merchant, a link). */
  start: (opts: { merchantId?: string, binding?: string, linkId?: string }) => Promise<{ url: string, expiresAt: Date }>
  complete: (params: { code?: string, state?: string, binding?: string, reference: string }, log: Pick<Logger, 'info' | 'warn' | 'error'>) => Promise<CallbackResult>
}

export interface OnboardingOptions {
  authorizeUrl: string
  clientId: string
  redirectUrl: string
  stateStore: StateStore
  linkStore: LinkStore
  tokenStore: TokenStore
  tokenClient: TokenClient
  /** ONBOARDING_BROWSER_BINDING=required: a callback from another browser is refused. */
  bindingRequired: boolean
  /** How long a reload waits for the first callback's exchange to end. */
  replayWaitMs: number
  /** Lifecycle events (merchant.connected, merchant.reconnected, onboarding.failed). */
  events?: EventSink
  now?: () => number
  /** Delays between attempts to store freshly exchanged tokens while Redis blips. */
  storeRetryDelaysMs?: number[]
}

type Log = Pick<Logger, 'info' | 'warn' | 'error'>

export function createOnboarding (opts: OnboardingOptions): Onboarding {
  const now = opts.now ?? Date.now
  const retryDelays = opts.storeRetryDelaysMs ?? [100, 400, 1000]
  const fail = (reason: FailureReason): CallbackOutcome => ({ ok: false, reason })

  /** A used state seen again: the first outcome for the browser that used it, else invalid_state. */
  async function replay (state: string, binding: string | undefined, reference: string): Promise<CallbackResult> {
    const refused = { outcome: fail('invalid_state'), reference, replayed: false, bindingMismatch: false }
    const deadline = Date.now() + opts.replayWaitMs
    for (;;) {
      const entry = await opts.stateStore.outcome<Settled>(state)
      // Hashes are compared, never the browser's value itself.
      if (entry === undefined || entry.binding === undefined || entry.binding !== binding) return refused
      if (entry.outcome !== undefined) return { ...entry.outcome, replayed: true, bindingMismatch: false }
      // The first callback is still exchanging the code; past the longest exchange, its outcome
      // was lost (Redis failed as it was kept): the state is used all the same.
      if (Date.now() > deadline) return refused
      await sleep(100)
    }
  }

  async function exchange (code: string, bound: StateRecord, log: Log): Promise<CallbackOutcome & { existed?: boolean }> {
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

    // Whether this is a first connection or a new one of a known merchant (for its event only).
    const existed = await opts.tokenStore.version(tokens.merchantId).then(v => v !== undefined, () => false)
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
    return { ok: true, merchantId: record.merchantId, existed }
  }

  /**
   * The end of a consumed state: the link learns it, the partner gets its event, and a reload
   * will replay it. Best effort: the merchant's tokens are stored already.
   */
  async function settle (state: string, settled: Settled, bound: StateRecord, link: Link | undefined, existed: boolean, log: Log): Promise<void> {
    const { outcome } = settled
    let reference: string | null = null
    if (settled.linkId !== undefined) {
      try {
        // A link that another onboarding connected first keeps its merchant: this outcome is
        // not the link's, so neither its redirect nor its event names the link.
        if (await opts.linkStore.complete(settled.linkId, outcome.ok ? { merchantId: outcome.merchantId } : { reason: outcome.reason })) {
          reference = link?.reference ?? null
        } else {
          log.warn({ onboarding_id: settled.linkId, outcome: outcome.ok ? 'connected' : outcome.reason }, 'onboarding link already completed; this outcome is not recorded on it')
          settled.linkId = undefined
        }
      } catch (err) {
        log.error({ err, onboarding_id: settled.linkId }, 'could not record the outcome of an onboarding link')
      }
    }
    const linkId = settled.linkId
    const data: EventData = { onboarding_id: linkId ?? null, reference }
    if (outcome.ok) opts.events?.emit(existed ? 'merchant.reconnected' : 'merchant.connected', outcome.merchantId, data)
    else opts.events?.emit('onboarding.failed', bound.merchantId ?? null, { ...data, reason: outcome.reason })
    await keep(state, settled, log)
  }

  /** Keeps a used state's outcome for a reload by its browser. Best effort. */
  async function keep (state: string, settled: Settled, log: Log): Promise<void> {
    try {
      await opts.stateStore.settle(state, settled)
    } catch (err) {
      log.warn({ err }, 'could not keep the callback outcome for a reload')
    }
  }

  return {
    async start ({ merchantId, binding, linkId }) {
      const { state, expiresAt } = await opts.stateStore.create({ merchantId, linkId, binding: binding === undefined ? undefined : hashBinding(binding) })
      const url = new URL(opts.authorizeUrl)
      url.searchParams.set('sub', 'oauth')
      url.searchParams.set('client_id', opts.clientId)
      url.searchParams.set('redirect_url', opts.redirectUrl)
      url.searchParams.set('state', state)
      return { url: url.href, expiresAt }
    },

    async complete ({ code, state, binding, reference }, log) {
      const result = (outcome: CallbackOutcome, extra: Partial<CallbackResult> = {}): CallbackResult =>
        ({ outcome, reference, replayed: false, bindingMismatch: false, ...extra })
      // CyberSource redirects a denial with no parameters at all.
      if (code === undefined && state === undefined) return result(fail('access_denied'))
      if (state === undefined || state === '') return result(fail('invalid_state'))
      const bindingHash = binding === undefined ? undefined : hashBinding(binding)
      // Consumed before the exchange: of concurrent callbacks with one state, one goes on.
      let consumed
      try {
        consumed = await opts.stateStore.consume(state, bindingHash, opts.bindingRequired)
        if (consumed.kind === 'unknown') return await replay(state, bindingHash, reference)
        if (consumed.kind === 'expired') return result(fail('invalid_state'))
      } catch (err) {
        if (!(err instanceof StorageUnavailableError)) throw err
        log.error({ err }, 'storage unavailable: the onboarding state cannot be checked')
        return result(fail('storage_unavailable'))
      }
      // Another browser than the one that started the onboarding: the state stays for its owner.
      if (consumed.kind === 'browser_mismatch') return result(fail('browser_mismatch'), { bindingMismatch: true })
      const { record, bindingMatched } = consumed
      // A state of a link that has connected a merchant since it was started: the link is done,
      // and no second merchant is exchanged through it.
      const link = record.linkId === undefined ? undefined : await opts.linkStore.get(record.linkId)
      if (link?.status === 'connected') {
        log.warn({ onboarding_id: record.linkId }, 'callback for an onboarding link that is already connected; nothing exchanged')
        const refused: Settled = { outcome: fail('invalid_state'), reference }
        await keep(state, refused, log)
        return result(refused.outcome)
      }
      const exchanged: CallbackOutcome & { existed?: boolean } = code === undefined || code === '' ? fail('access_denied') : await exchange(code, record, log)
      const { existed = false, ...outcome } = exchanged
      const settled: Settled = { outcome, reference, linkId: record.linkId }
      await settle(state, settled, record, link, existed, log)
      return result(outcome, { linkId: settled.linkId, bindingMismatch: record.binding !== undefined && !bindingMatched })
    }
  }
}
