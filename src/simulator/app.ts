// A CyberSource simulator for the partner OAuth flow: the Business
// Center consent page, POST /oauth2/v3/token, JWT-shaped tokens with a merchant_id claim, optional
// mutual TLS, and switches for the failures CyberSource produces, in-process and under /__sim/.
import type { TLSSocket } from 'node:tls'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from 'fastify'
import formbody from '@fastify/formbody'
import { Type } from '@sinclair/typebox'
import { ID_PATTERN } from '../config.js'
import { PAGE_HEADERS, consentPage, errorPage } from './html.js'
import { openStateFile, type StateFile } from './state-file.js'
import { OAuthError, createGrants, field, random, type Fields } from './grants.js'

export const FAULTS = [
  'none', 'invalid_grant', 'invalid_client', 'error_500_oauth', 'error_500_empty', 'error_502_html',
  'garbage', 'huge', 'no_access_token', 'not_jwt', 'no_merchant_id', 'wrong_merchant', 'drop'
] as const
export type Fault = typeof FAULTS[number]
export type GrantType = 'authorization_code' | 'refresh_token'

/** What the next token requests experience. Replaced as a whole by setBehavior. */
export interface Behavior {
  fault?: Fault
  /** Wait this long before answering a token request. */
  delayMs?: number
  /** How many (matching) token requests the behavior applies to; unlimited when absent. */
  times?: number
  /** Only token requests of this grant are affected. */
  grantType?: GrantType
  /**
   * The share (0-1) of matching token requests the behavior applies to, drawn at random for each;
   * the others are answered normally and do not count against `times`. All of them when absent.
   */
  failureRate?: number
  /** The `merchant_id` claim of `wrong_merchant` answers (default `other_merchant`). */
  merchantId?: string
}

export interface SimulatorOptions {
  clientId: string
  clientSecret: string
  /** The registered redirect URL; when absent any absolute http(s) URL is accepted. */
  redirectUrl?: string
  /** Shown on the consent page ("<partnerName> wants access to your account"). */
  partnerName?: string
  defaultMerchantId?: string
  /** Granted scopes: the `scopes` claim, and space-separated as the response's `scope`. */
  scopes?: string[]
  codeTtlSeconds?: number
  accessTokenTtlSeconds?: number
  refreshTokenTtlSeconds?: number
  /** Issue a new refresh token on every refresh and invalidate the old one. */
  rotateRefreshTokens?: boolean
  /**
   * HTTP status of OAuth error answers: 500 by default, as CyberSource documents for every token
   * request failure; 400 (RFC 6749) is the simulator's former behaviour.
   */
  oauthErrorStatus?: number
  /**
   * A JSON file that keeps the issued refresh tokens (their digests, lifetimes, rotations and
   * revocations) across restarts; written behind the requests and when the simulator closes.
   * Codes are not kept.
   */
  stateFile?: string
  /** Where warnings go (an unreadable or corrupt state file); stderr by default. */
  warn?: (message: string) => void
  /** Size of a padding claim, for realistic (~1.5 KB) tokens. */
  tokenPadBytes?: number
  behavior?: Behavior
  /** Mutual TLS: clients need a certificate signed by `ca`, checked at the handshake. */
  https?: { key: string | Buffer, cert: string | Buffer, ca: string | Buffer }
  /** Serve the /__sim/ admin API (default true). */
  adminApi?: boolean
  /** Recorded token requests kept (oldest dropped first). */
  maxRecords?: number
  logger?: FastifyServerOptions['logger']
  loggerInstance?: FastifyBaseLogger
  /** Clock, epoch milliseconds. */
  now?: () => number
  /** Random numbers in [0, 1) for `failureRate` (Math.random by default). */
  random?: () => number
}

export interface TokenRequestRecord {
  method: string
  /** Path without the query string. */
  path: string
  /** The request target as received, query string included. */
  url: string
  headers: Record<string, string | string[] | undefined>
  /** Parsed form fields (repeated fields as arrays); empty when the body was not a form. */
  form: Record<string, string | string[]>
  clientCertificate: { presented: boolean, subjectCN: string | null }
  /** Epoch milliseconds. */
  receivedAt: number
}

export interface SimulatorStats {
  /** Successful code exchanges. */
  exchanges: number
  /** Successful refreshes. */
  refreshes: number
  /** Token requests answered with an error or a fault. */
  failures: number
}

export interface SimulatorControl {
  setBehavior: (behavior: Behavior) => void
  behavior: () => Behavior
  /** Clears the behavior, the recorded requests and the stats; issued codes and tokens stay valid. */
  reset: () => void
  requests: () => TokenRequestRecord[]
  stats: () => SimulatorStats
  /** Mint an authorization code as if the merchant had clicked Allow. */
  issueCode: (merchantId: string) => string
  /** Invalidate every refresh token of the merchant; returns how many there were. */
  revokeRefreshTokens: (merchantId: string) => number
}

export interface Simulator {
  /** Not listening yet: call app.listen() or use app.inject(). */
  app: FastifyInstance
  control: SimulatorControl
}

export const AUTHORIZE_PATH = '/ebc2/oauth/authorize'
export const TOKEN_PATH = '/oauth2/v3/token'
const CORRELATION_HEADER = 'v-c-client-correlation-id'
const MAX_PARAM_LENGTH = 2048
const DEFAULT_SCOPES = ['payments_with_standalone_credit', 'transactions', 'invoicing', 'boarding']
/** Size of the `huge` fault's body: far over what any client should buffer. */
export const HUGE_BODY_BYTES = 10 * 1024 * 1024
const DEFAULT_WRONG_MERCHANT = 'other_merchant'
/** CyberSource: "Any token request failure results in an HTTP status code of 500". */
export const DEFAULT_OAUTH_ERROR_STATUS = 500

let hugeBody: Buffer | undefined
/** A JSON-looking body of HUGE_BODY_BYTES, made once and shared (the simulator's own memory stays flat). */
function huge (): Buffer {
  if (hugeBody === undefined) {
    const head = '{"access_token":"'
    const tail = '","token_type":"Bearer"}'
    hugeBody = Buffer.alloc(HUGE_BODY_BYTES, 'A')
    hugeBody.write(head, 0)
    hugeBody.write(tail, HUGE_BODY_BYTES - tail.length)
  }
  return hugeBody
}

const BehaviorSchema = Type.Object({
  fault: Type.Optional(Type.Union(FAULTS.map(f => Type.Literal(f)))),
  delayMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 600_000 })),
  times: Type.Optional(Type.Integer({ minimum: 1 })),
  grantType: Type.Optional(Type.Union([Type.Literal('authorization_code'), Type.Literal('refresh_token')])),
  failureRate: Type.Optional(Type.Number({ minimum: 0, maximum: 1 })),
  merchantId: Type.Optional(Type.String({ pattern: ID_PATTERN.source }))
}, { additionalProperties: false })
const MerchantSchema = Type.Object({ merchant_id: Type.String({ pattern: ID_PATTERN.source }) })

function isHttpUrl (value: string): boolean {
  try {
    const u = new URL(value)
    return u.protocol === 'http:' || u.protocol === 'https:'
  } catch {
    return false
  }
}

export function buildSimulator (opts: SimulatorOptions): Simulator {
  const now = opts.now ?? Date.now
  const random01 = opts.random ?? Math.random
  const scopes = opts.scopes ?? DEFAULT_SCOPES
  const codeTtlMs = (opts.codeTtlSeconds ?? 600) * 1000
  const accessTtl = opts.accessTokenTtlSeconds ?? 900
  const refreshTtl = opts.refreshTokenTtlSeconds ?? 31_536_000
  const errorStatus = opts.oauthErrorStatus ?? DEFAULT_OAUTH_ERROR_STATUS
  const maxRecords = opts.maxRecords ?? 1000
  const warn = opts.warn ?? ((m: string) => { process.stderr.write(`simulator: ${m}\n`) })

  const state: StateFile | undefined = opts.stateFile === undefined ? undefined : openStateFile(opts.stateFile, { warn, now })
  const grants = createGrants({
    clientId: opts.clientId,
    clientSecret: opts.clientSecret,
    scopes,
    codeTtlMs,
    accessTtl,
    refreshTtl,
    rotateRefreshTokens: opts.rotateRefreshTokens === true,
    tokenPadBytes: opts.tokenPadBytes,
    now,
    refreshTokens: state?.grants,
    changed: () => state?.changed()
  })
  let records: TokenRequestRecord[] = []
  let stats: SimulatorStats = { exchanges: 0, refreshes: 0, failures: 0 }
  let behavior: Behavior = {}
  let remaining = Infinity
  const pendingDelays = new Set<AbortController>()

  const control: SimulatorControl = {
    setBehavior (b) {
      behavior = { ...b }
      remaining = b.times ?? Infinity
    },
    behavior: () => ({ ...behavior }),
    reset () {
      control.setBehavior({})
      records = []
      stats = { exchanges: 0, refreshes: 0, failures: 0 }
    },
    requests: () => records.map(r => structuredClone(r)),
    stats: () => ({ ...stats }),
    issueCode: (merchantId) => grants.issueCode(opts.clientId, merchantId),
    revokeRefreshTokens: (merchantId) => grants.revoke(merchantId)
  }
  control.setBehavior(opts.behavior ?? {})

  /** The behavior for this request, consuming one of its `times` when it applies. */
  function applicable (grantType: string | undefined): Behavior | undefined {
    if (remaining <= 0) return undefined
    if ((behavior.fault ?? 'none') === 'none' && (behavior.delayMs ?? 0) === 0) return undefined
    if (behavior.grantType !== undefined && behavior.grantType !== grantType) return undefined
    if (behavior.failureRate !== undefined && random01() >= behavior.failureRate) return undefined
    remaining--
    return behavior
  }

  function record (request: FastifyRequest, fields: Fields): void {
    const socket = request.raw.socket as Partial<TLSSocket>
    const cert = typeof socket.getPeerCertificate === 'function' ? socket.getPeerCertificate() : undefined
    const presented = cert !== undefined && cert !== null && Object.keys(cert).length > 0
    const form: Record<string, string | string[]> = {}
    for (const [k, v] of Object.entries(fields)) {
      if (typeof v === 'string' || (Array.isArray(v) && v.every(x => typeof x === 'string'))) form[k] = v
    }
    records.push({
      method: request.method,
      path: request.url.split('?')[0],
      url: request.url,
      headers: { ...request.headers },
      form,
      clientCertificate: { presented, subjectCN: presented && typeof cert?.subject?.CN === 'string' ? cert.subject.CN : null },
      receivedAt: now()
    })
    if (records.length > maxRecords) records = records.slice(-maxRecords)
  }

  function oauthError (reply: FastifyReply, status: number, error: string, description: string): FastifyReply {
    stats.failures++
    return reply.code(status).header('cache-control', 'no-store').header('pragma', 'no-cache')
      .type('application/json;charset=UTF-8').send({ error, error_description: description })
  }

  /** Waits delayMs; false when the client went away or the simulator is closing. */
  async function delay (request: FastifyRequest, ms: number): Promise<boolean> {
    const ac = new AbortController()
    const socket = request.raw.socket
    const abort = (): void => ac.abort()
    socket.once('close', abort)
    pendingDelays.add(ac)
    try {
      await sleep(ms, undefined, { signal: ac.signal })
      return true
    } catch {
      return false
    } finally {
      pendingDelays.delete(ac)
      socket.off('close', abort)
    }
  }

  // forceCloseConnections: close() ends keep-alive and half-open client connections at once.
  const base = {
    forceCloseConnections: true,
    ...(opts.loggerInstance === undefined ? { logger: opts.logger ?? false } : { loggerInstance: opts.loggerInstance })
  }
  // Typed as a plain FastifyInstance: routes only touch what HTTP and HTTPS servers share.
  const app = (opts.https === undefined
    ? Fastify(base)
    : Fastify({ ...base, https: { ...opts.https, requestCert: true, rejectUnauthorized: true } })) as unknown as FastifyInstance

  app.register(formbody)
  // Any other body is left unparsed so the token endpoint can answer invalid_request itself.
  app.addContentTypeParser('*', (_req, _payload, done) => { done(null, undefined) })
  app.addHook('preClose', async () => { for (const ac of pendingDelays) ac.abort() })
  if (state !== undefined) app.addHook('onClose', async () => { await state.flush() })

  app.setErrorHandler((err: Error & { statusCode?: number }, request, reply) => {
    const status = err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 600 ? err.statusCode : 500
    if (request.url.startsWith(TOKEN_PATH)) {
      return oauthError(reply, status < 500 ? errorStatus : 500, status < 500 ? 'invalid_request' : 'server_error', 'the request could not be processed')
    }
    if (request.url.startsWith(AUTHORIZE_PATH)) {
      return reply.code(status).headers(PAGE_HEADERS).send(errorPage('The request could not be processed.'))
    }
    return reply.code(status).send({ error: status < 500 ? err.message : 'internal error' })
  })

  // --- Business Center consent page -------------------------------------------------------

  const badPage = (reply: FastifyReply, message: string): FastifyReply =>
    reply.code(400).headers(PAGE_HEADERS).send(errorPage(message))

  /** Checks client_id / redirect_url / state; an error message, or the validated values. */
  function authorizeParams (fields: Fields): { clientId: string, redirectUrl: string, state: string | undefined } | string {
    for (const [k, v] of Object.entries(fields)) {
      if (typeof v !== 'string') return `Parameter ${k} is repeated.`
      if (v.length > MAX_PARAM_LENGTH) return `Parameter ${k} is too long.`
    }
    const clientId = field(fields, 'client_id')
    const redirectUrl = field(fields, 'redirect_url')
    if (clientId !== opts.clientId) return 'Unknown client_id.'
    if (redirectUrl === undefined || !isHttpUrl(redirectUrl)) return 'redirect_url must be an absolute http(s) URL.'
    if (opts.redirectUrl !== undefined && redirectUrl !== opts.redirectUrl) return 'redirect_url does not match the registered redirect URL.'
    return { clientId, redirectUrl, state: field(fields, 'state') }
  }

  app.get(AUTHORIZE_PATH, async (request, reply) => {
    const query = request.query as Fields
    if (field(query, 'sub') !== 'oauth') return badPage(reply, 'Parameter sub must be "oauth".')
    const params = authorizeParams(query)
    if (typeof params === 'string') return badPage(reply, params)
    return reply.headers(PAGE_HEADERS).send(consentPage({
      action: AUTHORIZE_PATH,
      partnerName: opts.partnerName ?? 'Demo Partner',
      clientId: params.clientId,
      redirectUrl: params.redirectUrl,
      state: params.state,
      merchantId: opts.defaultMerchantId ?? 'demo_merchant',
      scopes
    }))
  })

  app.post(AUTHORIZE_PATH, async (request, reply) => {
    const fields = (request.body ?? {}) as Fields
    const params = authorizeParams(fields)
    if (typeof params === 'string') return badPage(reply, params)
    const decision = field(fields, 'decision')
    if (decision === 'deny') return reply.redirect(params.redirectUrl, 302) // no parameters at all
    if (decision !== 'allow') return badPage(reply, 'Choose Allow or Deny.')
    const merchantId = field(fields, 'merchant_id') ?? ''
    if (!ID_PATTERN.test(merchantId)) return badPage(reply, 'Merchant ID must be 1-64 letters, digits, "_" or "-".')
    const target = new URL(params.redirectUrl)
    target.searchParams.append('code', grants.issueCode(params.clientId, merchantId))
    if (params.state !== undefined) target.searchParams.append('state', params.state)
    return reply.redirect(target.href, 302)
  })

  // --- Token endpoint ---------------------------------------------------------------------

  app.post(TOKEN_PATH, async (request, reply) => {
    // CyberSource reads a form body only: JSON carrying the same fields is an invalid request.
    const isForm = /^application\/x-www-form-urlencoded\s*(;|$)/i.test(request.headers['content-type'] ?? '')
    const fields: Fields = isForm && typeof request.body === 'object' && request.body !== null ? request.body as Fields : {}
    record(request, fields)
    const correlationId = request.headers[CORRELATION_HEADER]
    if (typeof correlationId === 'string') reply.header(CORRELATION_HEADER, correlationId)

    const b = applicable(field(fields, 'grant_type'))
    if (b?.delayMs !== undefined && b.delayMs > 0 && !(await delay(request, b.delayMs))) {
      stats.failures++
      reply.hijack()
      request.raw.socket.destroy()
      return
    }
    const json = (status: number, body: unknown): FastifyReply => {
      if (status !== 200) stats.failures++
      return reply.code(status).type('application/json;charset=UTF-8').header('cache-control', 'no-store').header('pragma', 'no-cache').send(body)
    }
    switch (b?.fault ?? 'none') {
      case 'invalid_grant': return oauthError(reply, errorStatus, 'invalid_grant', 'simulated: the grant is invalid')
      case 'invalid_client': return oauthError(reply, errorStatus, 'invalid_client', 'simulated: client authentication failed')
      case 'error_500_oauth': return oauthError(reply, 500, 'server_error', 'simulated: internal error')
      case 'error_500_empty': stats.failures++; return reply.code(500).send('')
      case 'error_502_html':
        stats.failures++
        return reply.code(502).type('text/html').send('<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>')
      case 'garbage':
        stats.failures++
        return reply.code(200).type('application/json;charset=UTF-8').send('{"access_token": <<not json>>')
      case 'huge':
        stats.failures++
        return reply.code(200).type('application/json;charset=UTF-8').send(huge())
      case 'wrong_merchant': {
        // Well-formed tokens for another merchant; no grant is used or issued.
        const other = b?.merchantId ?? DEFAULT_WRONG_MERCHANT
        stats.failures++
        return json(200, grants.tokenResponse(other, grants.jwt('refresh_token', other, refreshTtl), true))
      }
      case 'no_access_token': stats.failures++; return json(200, { token_type: 'Bearer', expires_in: accessTtl, scope: scopes.join(' '), client_status: 'active' })
      case 'not_jwt':
        stats.failures++
        return json(200, { access_token: random(32), token_type: 'Bearer', refresh_token: random(32), expires_in: accessTtl, scope: scopes.join(' '), refresh_token_expires_in: refreshTtl, client_status: 'active' })
      case 'drop':
        stats.failures++
        reply.hijack()
        request.raw.socket.destroy()
        return
    }
    try {
      const { body, grantType } = grants.grant(fields, b?.fault !== 'no_merchant_id')
      if (grantType === 'authorization_code') stats.exchanges++
      else stats.refreshes++
      return json(200, body)
    } catch (err) {
      if (!(err instanceof OAuthError)) throw err
      return oauthError(reply, errorStatus, err.code, err.description)
    }
  })

  // --- Admin API (not part of CyberSource) ------------------------------------------------

  if (opts.adminApi ?? true) {
    app.get('/__sim/behavior', async () => control.behavior())
    app.post('/__sim/behavior', { schema: { body: BehaviorSchema } }, async (request) => {
      control.setBehavior(request.body as Behavior)
      return control.behavior()
    })
    app.post('/__sim/reset', async (_request, reply) => {
      control.reset()
      return reply.code(204).send()
    })
    app.get('/__sim/requests', async () => control.requests())
    app.get('/__sim/stats', async () => control.stats())
    app.post('/__sim/codes', { schema: { body: MerchantSchema } }, async (request, reply) => {
      const { merchant_id: merchantId } = request.body as { merchant_id: string }
      return reply.code(201).send({ code: control.issueCode(merchantId), expires_in: codeTtlMs / 1000 })
    })
    app.post('/__sim/revoke', { schema: { body: MerchantSchema } }, async (request) => {
      const { merchant_id: merchantId } = request.body as { merchant_id: string }
      return { revoked: control.revokeRefreshTokens(merchantId) }
    })
  }

  return { app, control }
}
