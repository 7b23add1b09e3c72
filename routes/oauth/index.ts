// Browser-facing onboarding routes (SPEC §2): /oauth/connect and /oauth/callback.
// Answers are small HTML pages, or redirects to ONBOARDING_SUCCESS_URL / ONBOARDING_FAILURE_URL.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { ID_PATTERN } from '../../src/config.js'
import type { FailureReason } from '../../src/onboarding.js'
import { renderPage } from '../../src/pages.js'
import { StorageUnavailableError } from '../../src/errors.js'

const MAX_PARAM_LENGTH = 2048

type PageReason = FailureReason | 'invalid_request' | 'rate_limited'

const FAILURES: Record<PageReason, { status: number, title: string, text: string }> = {
  access_denied: { status: 200, title: 'Connection cancelled', text: 'You did not allow access, so nothing was connected. You can close this window, or start again from the partner portal.' },
  invalid_state: { status: 401, title: 'This link has expired', text: 'This sign-in link is not valid any more (it expired or was already used). Please start again from the partner portal.' },
  exchange_failed: { status: 502, title: 'Connection failed', text: 'CyberSource did not accept the authorization. Please start again from the partner portal; if it keeps failing, contact support with the reference below.' },
  upstream_unavailable: { status: 503, title: 'CyberSource is not reachable', text: 'We could not reach CyberSource to finish connecting your account. Please try again in a few minutes from the partner portal.' },
  merchant_mismatch: { status: 403, title: 'Different merchant account', text: 'You signed in with a different merchant account than the one this link was made for. Nothing was connected. Please sign in with the right account and start again.' },
  storage_unavailable: { status: 503, title: 'Temporarily unavailable', text: 'We could not finish connecting your account because of a temporary problem on our side. Please try again in a few minutes.' },
  invalid_request: { status: 400, title: 'Invalid request', text: 'The link you followed is malformed. Please start again from the partner portal.' },
  rate_limited: { status: 429, title: 'Too many attempts', text: 'Too many requests came from your network. Please wait a minute, then start again from the partner portal.' }
}

/**
 * The headers of every answer of the browser routes, beside helmet's: pages must never be cached
 * or leak the callback URL through a Referer. (Also sent by src/app.ts's frameworkErrors, which
 * no hook of this scope sees.)
 */
export function pageHeaders (reply: FastifyReply): FastifyReply {
  return reply.header('cache-control', 'no-store').header('referrer-policy', 'no-referrer')
}

/** The failure page the merchant's browser sees for a reason. */
export function failurePage (reason: PageReason, correlationId: string): string {
  const f = FAILURES[reason]
  return renderPage(f.title, [f.text], correlationId)
}

function withParams (base: string, params: Record<string, string>): string {
  const url = new URL(base)
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v)
  return url.href
}

/** Query parameters as single strings; undefined when one repeats or is too long (SPEC: 400). */
function singleParams (request: FastifyRequest): Record<string, string> | undefined {
  const out: Record<string, string> = {}
  for (const [k, v] of Object.entries(request.query as Record<string, unknown>)) {
    if (typeof v !== 'string' || v.length > MAX_PARAM_LENGTH) return undefined
    out[k] = v
  }
  return out
}

export default async function oauthRoutes (app: FastifyInstance): Promise<void> {
  const { successUrl, failureUrl } = app.config.onboarding

  async function fail (request: FastifyRequest, reply: FastifyReply, reason: PageReason, status?: number): Promise<FastifyReply> {
    // Malformed, throttled and bad-state requests get the page, never a redirect: nothing vouches for them.
    if (failureUrl !== undefined && reason !== 'invalid_request' && reason !== 'invalid_state' && reason !== 'rate_limited') {
      return await reply.redirect(withParams(failureUrl, { reason, correlation_id: request.id }), 302)
    }
    return await reply.code(status ?? FAILURES[reason].status).type('text/html; charset=utf-8').send(failurePage(reason, request.id))
  }

  // Pages must never be cached, framed (helmet) or leak the callback URL through a Referer.
  app.addHook('onSend', async (_request, reply) => { pageHeaders(reply) })

  app.setErrorHandler(async (err, request, reply) => {
    if (err instanceof StorageUnavailableError) {
      request.log.error({ err }, 'storage unavailable during onboarding')
      return await fail(request, reply, 'storage_unavailable')
    }
    const status = (err as { statusCode?: number }).statusCode ?? 500
    // The rate limiter has already set Retry-After; a 4xx (e.g. 414) is the client's malformed request.
    if (status === 429) return await fail(request, reply, 'rate_limited')
    if (status >= 400 && status < 500) return await fail(request, reply, 'invalid_request', status)
    request.log.error({ err }, 'onboarding request failed')
    return await reply.code(500).type('text/html; charset=utf-8')
      .send(renderPage('Something went wrong', ['Please try again from the partner portal.'], request.id))
  })

  app.get('/connect', async (request, reply) => {
    const params = singleParams(request)
    const merchantId = params?.merchant_id
    if (params === undefined || (merchantId !== undefined && !ID_PATTERN.test(merchantId))) return await fail(request, reply, 'invalid_request')
    const { url } = await app.onboarding.start(merchantId)
    return await reply.redirect(url, 302)
  })

  app.get('/callback', async (request, reply) => {
    const params = singleParams(request)
    if (params === undefined) {
      app.metrics.callbacks.inc({ outcome: 'invalid_request' })
      return await fail(request, reply, 'invalid_request')
    }
    const outcome = await app.onboarding.complete({ code: params.code, state: params.state }, request.log)
    app.metrics.callbacks.inc({ outcome: outcome.ok ? 'connected' : outcome.reason })
    if (!outcome.ok) return await fail(request, reply, outcome.reason)
    if (successUrl !== undefined) {
      return await reply.redirect(withParams(successUrl, { merchant_id: outcome.merchantId, correlation_id: request.id }), 302)
    }
    return await reply.type('text/html; charset=utf-8').send(renderPage('Account connected', [
      `Your CyberSource merchant account ${outcome.merchantId} is now connected.`,
      'You can close this window and return to the partner portal.'
    ], request.id))
  })
}
