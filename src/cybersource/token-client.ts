// The CyberSource token client: POST /oauth2/v3/token, form body, mutual TLS (docs/architecture.md).
// The official SDK is not used: its createAccessToken is broken from 0.0.75 on and it logs secrets.
import { randomUUID } from 'node:crypto'
import { rootCertificates } from 'node:tls'
import { setTimeout as sleep } from 'node:timers/promises'
import { Agent, request } from 'undici'
import type { Logger } from 'pino'
import { CybsError, type CybsErrorKind } from './errors.js'
import { decodeJwtPayload } from './jwt.js'
import { ID_PATTERN } from '../config.js'

export interface TokenClientOptions {
  tokenUrl: string
  clientId: string
  clientSecret: string
  /** Total time for one request, connect included. */
  timeoutMs: number
  tls?: { cert?: string, key?: string, passphrase?: string, ca?: string }
  log: Pick<Logger, 'info' | 'warn' | 'error'>
  /** Refresh attempts on `unavailable` (codes are never retried once sent). */
  refreshAttempts?: number
  backoffBaseMs?: number
  backoffMaxMs?: number
  now?: () => number
  /** Called after every HTTP attempt, for metrics. */
  observe?: (grantType: string, outcome: 'ok' | CybsErrorKind, seconds: number) => void
}

export interface TokenSet {
  accessToken: string
  /** The refresh token CyberSource returned (for a refresh, the one sent when none came back). */
  refreshToken: string
  tokenType: string
  scope: string
  clientStatus: string
  /** Epoch milliseconds, measured from when the request was sent. */
  accessTokenExpiresAt: number
  /** Epoch milliseconds; undefined when a refresh answer did not say (the old expiry stands). */
  refreshTokenExpiresAt: number | undefined
  /** The `merchant_id` claim of the access token (or refresh token), when it is a valid id. */
  merchantId: string | undefined
  correlationId: string
}

export interface TokenClient {
  exchangeCode: (code: string) => Promise<TokenSet>
  refresh: (refreshToken: string) => Promise<TokenSet>
  /** Shutdown has begun: no further retries (a call under way finishes its current attempt). */
  drain: () => void
  close: () => Promise<void>
}

const MAX_BODY_BYTES = 64 * 1024
const DEFAULT_ACCESS_LIFETIME_S = 15 * 60
const DEFAULT_REFRESH_LIFETIME_S = 365 * 24 * 3600
// Failures that happen before a byte of the request left: safe to retry even for a code.
const NOT_SENT = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_CONNECT_TIMEOUT'])

/** OAuth errors that say CyberSource itself failed (RFC 6749 §5.2 / §4.1.2.1), not the grant. */
export const TRANSIENT_OAUTH_ERRORS = new Set(['server_error', 'temporarily_unavailable'])

/**
 * The CAs that verify CyberSource's certificate: CYBS_CA_FILE adds to the system roots, never
 * replaces them; undefined (Node's defaults) without it. The certificate is always verified.
 */
export function caBundle (extra?: string): string[] | undefined {
  return extra === undefined ? undefined : [...rootCertificates, extra]
}

type Grant = { grant_type: 'authorization_code', code: string } | { grant_type: 'refresh_token', refresh_token: string }

export function createTokenClient (opts: TokenClientOptions): TokenClient {
  const now = opts.now ?? Date.now
  const attempts = Math.max(1, opts.refreshAttempts ?? 3)
  const baseMs = opts.backoffBaseMs ?? 250
  const maxBackoffMs = opts.backoffMaxMs ?? 2000
  const tls = opts.tls ?? {}
  let draining = false
  const dispatcher = new Agent({
    connect: {
      cert: tls.cert,
      key: tls.key,
      passphrase: tls.passphrase,
      ca: caBundle(tls.ca),
      rejectUnauthorized: true,
      timeout: opts.timeoutMs
    },
    keepAliveTimeout: 30_000,
    connections: 16
  })

  async function post (grant: Grant, correlationId: string): Promise<TokenSet> {
    const form = new URLSearchParams({ client_id: opts.clientId, client_secret: opts.clientSecret, ...grant })
    const sentAt = now()
    let status: number
    let text: string
    try {
      const res = await request(opts.tokenUrl, {
        method: 'POST',
        dispatcher,
        headers: {
          'content-type': 'application/x-www-form-urlencoded',
          accept: 'application/json;charset=utf-8',
          'v-c-client-correlation-id': correlationId
        },
        body: form.toString(),
        signal: AbortSignal.timeout(opts.timeoutMs),
        headersTimeout: opts.timeoutMs,
        bodyTimeout: opts.timeoutMs
      })
      status = res.statusCode
      text = await readLimited(res.body)
    } catch (err) {
      // A timeout is a DOMException whose legacy `code` is a number (23): use its name then.
      const raw = (err as { code?: unknown }).code
      const code = typeof raw === 'string' ? raw : (err as Error).name
      const e = new CybsError('unavailable', `token request failed: ${code}`, correlationId)
      ;(e as CybsError & { notSent: boolean }).notSent = NOT_SENT.has(code)
      throw e
    }

    let body: unknown
    try { body = JSON.parse(text) } catch { body = undefined }
    const obj = typeof body === 'object' && body !== null && !Array.isArray(body) ? body as Record<string, unknown> : undefined

    if (obj !== undefined && typeof obj.error === 'string') {
      // Only a short, safe token of the OAuth error name is kept; error_description is dropped.
      const oauthError = /^[A-Za-z0-9_.-]{1,64}$/.test(obj.error) ? obj.error : 'unknown_error'
      throw new CybsError('rejected', `token request rejected: ${oauthError} (HTTP ${status})`, correlationId, status, oauthError)
    }
    if (status >= 500 || status === 429 || status === 408) {
      throw new CybsError('unavailable', `token endpoint answered HTTP ${status}`, correlationId, status)
    }
    if (status < 200 || status >= 300) {
      throw new CybsError('protocol', `token endpoint answered HTTP ${status} without an OAuth error`, correlationId, status)
    }
    if (obj === undefined) throw new CybsError('protocol', 'token response is not a JSON object', correlationId, status)
    return parseTokenSet(obj, grant, sentAt, correlationId, status)
  }

  function parseTokenSet (obj: Record<string, unknown>, grant: Grant, sentAt: number, correlationId: string, status: number): TokenSet {
    const fail = (what: string): never => { throw new CybsError('protocol', `token response ${what}`, correlationId, status) }
    const accessToken = typeof obj.access_token === 'string' && obj.access_token !== '' ? obj.access_token : fail('has no access_token')
    const accessClaims = decodeJwtPayload(accessToken) ?? fail('has an access_token that is not a JWT')
    let refreshToken = typeof obj.refresh_token === 'string' && obj.refresh_token !== '' ? obj.refresh_token : undefined
    // Only a token CyberSource issued in this answer may name the merchant: the refresh token a
    // refresh sent (and got back, or not at all) says nothing about what was issued now.
    const issuedRefreshToken = refreshToken !== undefined && !(grant.grant_type === 'refresh_token' && refreshToken === grant.refresh_token)
    if (refreshToken === undefined) {
      if (grant.grant_type === 'authorization_code') fail('has no refresh_token')
      refreshToken = (grant as { refresh_token: string }).refresh_token
    }
    const seconds = (v: unknown): number | undefined => typeof v === 'number' && Number.isFinite(v) && v > 0
      ? v
      : typeof v === 'string' && /^\d+$/.test(v) && Number(v) > 0 ? Number(v) : undefined
    const expiresIn = seconds(obj.expires_in) ?? DEFAULT_ACCESS_LIFETIME_S
    const refreshExpiresIn = seconds(obj.refresh_token_expires_in) ??
      (grant.grant_type === 'authorization_code' ? DEFAULT_REFRESH_LIFETIME_S : undefined)
    const claim = accessClaims.merchant_id ?? (issuedRefreshToken ? decodeJwtPayload(refreshToken)?.merchant_id : undefined)
    return {
      accessToken,
      refreshToken,
      tokenType: typeof obj.token_type === 'string' ? obj.token_type : 'Bearer',
      scope: typeof obj.scope === 'string' ? obj.scope : '',
      clientStatus: typeof obj.client_status === 'string' ? obj.client_status : '',
      accessTokenExpiresAt: sentAt + expiresIn * 1000,
      refreshTokenExpiresAt: refreshExpiresIn === undefined ? undefined : sentAt + refreshExpiresIn * 1000,
      merchantId: typeof claim === 'string' && ID_PATTERN.test(claim) ? claim : undefined,
      correlationId
    }
  }

  async function call (grant: Grant, maxAttempts: number): Promise<TokenSet> {
    for (let attempt = 1; ; attempt++) {
      const correlationId = randomUUID()
      const started = performance.now()
      try {
        const set = await post(grant, correlationId)
        opts.observe?.(grant.grant_type, 'ok', (performance.now() - started) / 1000)
        opts.log.info({ grant_type: grant.grant_type, correlation_id: correlationId, attempt, duration_ms: Math.round(performance.now() - started), outcome: 'ok' }, 'cybersource token request')
        return set
      } catch (err) {
        const e = err as CybsError & { notSent?: boolean }
        opts.observe?.(grant.grant_type, e.kind, (performance.now() - started) / 1000)
        // A refresh is retried when CyberSource is unavailable or says so itself (server_error,
        // temporarily_unavailable); a code only when the request never left (a code is single-use).
        const transient = e.kind === 'unavailable' || (e.kind === 'rejected' && TRANSIENT_OAUTH_ERRORS.has(e.oauthError ?? ''))
        const retryable = transient && attempt < maxAttempts && (grant.grant_type === 'refresh_token' || e.notSent === true)
        opts.log.warn({ grant_type: grant.grant_type, correlation_id: correlationId, attempt, duration_ms: Math.round(performance.now() - started), outcome: e.kind, status: e.status, oauth_error: e.oauthError, reason: e.message, retrying: retryable }, 'cybersource token request failed')
        if (!retryable || draining) throw e
        // Full jitter, bounded: spreads retries of many merchants after an outage.
        await sleep(Math.random() * Math.min(maxBackoffMs, baseMs * 2 ** (attempt - 1)))
        if (draining) throw e
      }
    }
  }

  return {
    exchangeCode: async (code) => await call({ grant_type: 'authorization_code', code }, attempts),
    refresh: async (refreshToken) => await call({ grant_type: 'refresh_token', refresh_token: refreshToken }, attempts),
    drain: () => { draining = true },
    close: async () => { await dispatcher.close() }
  }
}

async function readLimited (body: AsyncIterable<Buffer> & { destroy: () => unknown }): Promise<string> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of body) {
    size += chunk.length
    if (size > MAX_BODY_BYTES) {
      body.destroy()
      return ''
    }
    chunks.push(chunk)
  }
  return Buffer.concat(chunks).toString('utf8')
}
