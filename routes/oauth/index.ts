// Browser-facing onboarding routes: /oauth/connect, /oauth/links/:id/:key (an onboarding link's
// URL) and /oauth/callback. Answers are small HTML pages (src/pages.ts), or redirects to
// ONBOARDING_SUCCESS_URL / ONBOARDING_FAILURE_URL. Every start binds the onboarding to the browser
// with a cookie that the callback must bring back.
import { randomBytes } from 'node:crypto'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import cookie, { type CookieSerializeOptions } from '@fastify/cookie'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import {
  FAILURES, alreadyConnectedPage, errorPage, failurePage, pageHeaders, shortReference, successPage, type PageReason
} from '../../src/pages.js'
import { CallbackQuerySchema, ConnectQuerySchema, LinkVisitParamsSchema } from '../../src/schemas.js'
import { StorageUnavailableError } from '../../src/errors.js'

const HTML = 'text/html; charset=utf-8'
export const BINDING_COOKIE = 'cybs_onboarding'
const BINDING_VALUE = /^[A-Za-z0-9_-]{43}$/
/** Answered as a page, never a redirect: nothing vouches for them. */
const PAGE_ONLY = new Set<PageReason>(['invalid_request', 'invalid_state', 'rate_limited', 'link_not_found', 'link_expired'])

function withParams (base: string, params: Record<string, string | undefined>): string {
  const url = new URL(base)
  for (const [k, v] of Object.entries(params)) if (v !== undefined) url.searchParams.set(k, v)
  return url.href
}

export default async function oauthRoutes (fastify: FastifyInstance): Promise<void> {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>()
  const { publicBaseUrl, onboarding: { successUrl, failureUrl, stateTtlSeconds }, pages: branding } = app.config
  const bindingEnforced = String(app.config.browserBinding === 'required')
  // SameSite=Lax: the callback is a top-level cross-site GET from CyberSource, which Lax allows.
  // Secure only on https, so that http development URLs keep working. On https without a path
  // prefix, the __Host- prefix (which requires Path=/) keeps a sibling subdomain from planting a
  // binding value the browser would send first.
  const basePath = new URL(publicBaseUrl).pathname.replace(/\/+$/, '')
  const secure = publicBaseUrl.startsWith('https:')
  const hostOnly = secure && basePath === ''
  const bindingCookie = hostOnly ? `__Host-${BINDING_COOKIE}` : BINDING_COOKIE
  const cookieOptions: CookieSerializeOptions = {
    path: hostOnly ? '/' : `${basePath}/oauth`,
    httpOnly: true,
    sameSite: 'lax',
    secure,
    maxAge: stateTtlSeconds
  }
  await app.register(cookie)

  /** The browser's binding value: the one it already holds (several tabs may onboard), else a new one. */
  function bindBrowser (request: FastifyRequest, reply: FastifyReply): string {
    const held = request.cookies[bindingCookie]
    const value = held !== undefined && BINDING_VALUE.test(held) ? held : randomBytes(32).toString('base64url')
    reply.setCookie(bindingCookie, value, cookieOptions)
    return value
  }

  async function fail (request: FastifyRequest, reply: FastifyReply, reason: PageReason, opts: { status?: number, reference?: string, linkId?: string } = {}): Promise<FastifyReply> {
    const reference = opts.reference ?? request.id
    if (failureUrl !== undefined && !PAGE_ONLY.has(reason)) {
      return await reply.redirect(withParams(failureUrl, { reason, onboarding_id: opts.linkId, correlation_id: reference }), 302)
    }
    return await reply.code(opts.status ?? FAILURES[reason].status).type(HTML).send(failurePage(reason, reference, branding))
  }

  app.addHook('onSend', async (_request, reply) => { pageHeaders(reply) })
  // The page's support reference is the request's id: short enough to read over the phone, made
  // here (never the sender's), random so that it reveals no request rate.
  app.setGenReqId(() => shortReference())

  app.setErrorHandler(async (err, request, reply) => {
    const isCallback = request.routeOptions.url?.endsWith('/callback') === true
    if (err instanceof StorageUnavailableError) {
      request.log.error({ err }, 'storage unavailable during onboarding')
      return await fail(request, reply, 'storage_unavailable')
    }
    const status = (err as { statusCode?: number }).statusCode ?? 500
    // The rate limiter has already set Retry-After; a 4xx (a repeated or over-long parameter,
    // a 414) is the client's malformed request.
    const reason = status === 429 ? 'rate_limited' : status >= 400 && status < 500 ? 'invalid_request' : undefined
    if (reason !== undefined) {
      if (isCallback) {
        app.metrics.callbacks.inc({ outcome: reason })
        request.log.warn({ outcome: reason }, 'onboarding callback')
      }
      // A URL too long for the service is a parameter too long for the contract: 400, not 414.
      return await fail(request, reply, reason, { status: reason === 'invalid_request' ? (status === 414 ? 400 : status) : undefined })
    }
    request.log.error({ err }, 'onboarding request failed')
    return await reply.code(500).type(HTML).send(errorPage(request.id, branding))
  })

  // GET only: a HEAD (a link checker, a mail scanner) must not create a state or spend a code.
  app.get('/connect', { exposeHeadRoute: false, config: { startsOnboarding: true }, schema: { querystring: ConnectQuerySchema } }, async (request, reply) => {
    const binding = bindBrowser(request, reply)
    const { url } = await app.onboarding.start({ merchantId: request.query.merchant_id, binding })
    return await reply.redirect(url, 302)
  })

  app.get('/links/:id/:key', { exposeHeadRoute: false, config: { startsOnboarding: true, admitsStartItself: true }, schema: { params: LinkVisitParamsSchema } }, async (request, reply) => {
    const opened = await app.linkStore.open(request.params.id, request.params.key)
    if (opened.kind === 'not_found') return await fail(request, reply, 'link_not_found')
    if (opened.kind === 'expired') return await fail(request, reply, 'link_expired')
    if (opened.kind === 'connected') return await reply.type(HTML).send(alreadyConnectedPage(opened.link.merchantId ?? '', request.id, branding))
    await app.admitStart(request, reply)
    app.metrics.onboardingLinks.inc({ event: 'visited' })
    const binding = bindBrowser(request, reply)
    const { url } = await app.onboarding.start({ merchantId: opened.link.merchantId ?? undefined, binding, linkId: opened.link.id })
    return await reply.redirect(url, 302)
  })

  app.get('/callback', { exposeHeadRoute: false, schema: { querystring: CallbackQuerySchema } }, async (request, reply) => {
    const { code, state } = request.query
    const result = await app.onboarding.complete({ code, state, binding: request.cookies[bindingCookie], reference: request.id }, request.log)
    const { outcome, linkId, reference, replayed } = result
    const name = outcome.ok ? 'connected' : outcome.reason
    if (result.bindingMismatch) app.metrics.bindingFailures.inc({ enforced: bindingEnforced })
    if (!replayed) {
      app.metrics.callbacks.inc({ outcome: name })
      if (linkId !== undefined) app.metrics.onboardingLinks.inc({ event: outcome.ok ? 'connected' : 'failed' })
    }
    // The one line of every callback outcome, with the reference its page shows.
    const level = outcome.ok || name === 'access_denied' ? 'info' : 'warn'
    request.log[level]({ outcome: name, merchant_id: outcome.ok ? outcome.merchantId : undefined, onboarding_id: linkId, reference, replayed }, 'onboarding callback')
    if (!outcome.ok) return await fail(request, reply, outcome.reason, { reference, linkId })
    if (successUrl !== undefined) {
      return await reply.redirect(withParams(successUrl, { merchant_id: outcome.merchantId, onboarding_id: linkId, correlation_id: reference }), 302)
    }
    return await reply.type(HTML).send(successPage(outcome.merchantId, reference, branding))
  })
}
