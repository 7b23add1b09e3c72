// Browser-facing onboarding routes: /oauth/connect and /oauth/callback.
// Answers are small HTML pages (src/pages.ts), or redirects to ONBOARDING_SUCCESS_URL / ONBOARDING_FAILURE_URL.
import { randomUUID } from 'node:crypto'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { FAILURES, failurePage, pageHeaders, renderPage, type PageReason } from '../../src/pages.js'
import { CallbackQuerySchema, ConnectQuerySchema } from '../../src/schemas.js'
import { StorageUnavailableError } from '../../src/errors.js'

const HTML = 'text/html; charset=utf-8'

function withParams (base: string, params: Record<string, string>): string {
  const url = new URL(base)
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v)
  return url.href
}

export default async function oauthRoutes (fastify: FastifyInstance): Promise<void> {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>()
  const { successUrl, failureUrl } = app.config.onboarding

  async function fail (request: FastifyRequest, reply: FastifyReply, reason: PageReason, status?: number): Promise<FastifyReply> {
    // Malformed, throttled and bad-state requests get the page, never a redirect: nothing vouches for them.
    if (failureUrl !== undefined && reason !== 'invalid_request' && reason !== 'invalid_state' && reason !== 'rate_limited') {
      return await reply.redirect(withParams(failureUrl, { reason, correlation_id: request.id }), 302)
    }
    return await reply.code(status ?? FAILURES[reason].status).type(HTML).send(failurePage(reason, request.id))
  }

  app.addHook('onSend', async (_request, reply) => { pageHeaders(reply) })
  // A page shows its correlation id and the log keeps it: never one the sender chose (the
  // internal API takes a caller's own). Random, not a counter: it must not reveal request rates.
  app.setGenReqId(() => randomUUID())

  app.setErrorHandler(async (err, request, reply) => {
    if (err instanceof StorageUnavailableError) {
      request.log.error({ err }, 'storage unavailable during onboarding')
      return await fail(request, reply, 'storage_unavailable')
    }
    const status = (err as { statusCode?: number }).statusCode ?? 500
    // The rate limiter has already set Retry-After; a 4xx (a repeated or over-long parameter,
    // a 414) is the client's malformed request.
    if (status === 429) return await fail(request, reply, 'rate_limited')
    if (status >= 400 && status < 500) {
      if (request.routeOptions.url?.endsWith('/callback') === true) app.metrics.callbacks.inc({ outcome: 'invalid_request' })
      return await fail(request, reply, 'invalid_request', status)
    }
    request.log.error({ err }, 'onboarding request failed')
    return await reply.code(500).type(HTML).send(renderPage('Something went wrong', ['Please try again from the partner portal.'], request.id))
  })

  // GET only: a HEAD (a link checker, a mail scanner) must not create a state or spend a code.
  app.get('/connect', { exposeHeadRoute: false, schema: { querystring: ConnectQuerySchema } }, async (request, reply) => {
    const { url } = await app.onboarding.start(request.query.merchant_id)
    return await reply.redirect(url, 302)
  })

  app.get('/callback', { exposeHeadRoute: false, schema: { querystring: CallbackQuerySchema } }, async (request, reply) => {
    const { code, state } = request.query
    const outcome = await app.onboarding.complete({ code, state }, request.log)
    app.metrics.callbacks.inc({ outcome: outcome.ok ? 'connected' : outcome.reason })
    if (!outcome.ok) return await fail(request, reply, outcome.reason)
    if (successUrl !== undefined) {
      return await reply.redirect(withParams(successUrl, { merchant_id: outcome.merchantId, correlation_id: request.id }), 302)
    }
    return await reply.type(HTML).send(renderPage('Account connected', [
      `Your CyberSource merchant account ${outcome.merchantId} is now connected.`,
      'You can close this window and return to the partner portal.'
    ], request.id))
  })
}
