// /internal: the bearer guard (encapsulated here, not global) and the audit trail of every call
// (plugins/audit.ts). Routes say in their `config` what the audit needs: `lookup` marks the
// access-token lookup, whose successful GETs are summarized and whose outcomes are counted in
// metrics.
// The hook is callback-style: it runs on every lookup.
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { ID_PATTERN } from '../../src/config.js'
import { addBearerGuard } from './guard.js'
import merchantRoutes from './v1/merchants/index.js'
import onboardingLinkRoutes from './v1/onboarding-links.js'
import eventRoutes from './v1/events.js'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The access-token lookup (audit summaries, lookup metrics). */
    lookup?: boolean
  }
}

/**
 * The merchant a call names: a path parameter, or the body's for onboarding links. Only a valid
 * id is logged: the text of a rejected request (newlines, control characters) never reaches the
 * audit trail.
 */
function merchantIdOf (request: FastifyRequest): string | undefined {
  const fromPath = (request.params as { merchantId?: unknown } | undefined)?.merchantId
  const given = fromPath ?? (request.body as { merchant_id?: unknown } | undefined)?.merchant_id
  return typeof given === 'string' && ID_PATTERN.test(given) ? given : undefined
}

export default async function internalRoutes (app: FastifyInstance): Promise<void> {
  addBearerGuard(app)
  // Bodies are JSON only: anything else is 415 (Fastify would also parse text/plain).
  app.removeContentTypeParser('text/plain')

  // On send, not on response: an onResponse hook makes Fastify listen on every response.
  app.addHook('onSend', (request, reply, payload, done) => {
    const { url = '', config } = request.routeOptions
    const outcome = request.errorCode ?? 'ok'
    const merchantId = merchantIdOf(request)
    if (config.lookup === true) app.metrics.countLookup(outcome)
    // A HEAD hands out no token: it keeps a line of its own.
    if (config.lookup === true && outcome === 'ok' && request.method === 'GET') app.audit.lookup(request, url, merchantId)
    else app.audit.call(request, url, reply.statusCode, outcome, merchantId)
    done(null, payload)
  })

  await app.register(merchantRoutes, { prefix: '/v1/merchants' })
  await app.register(onboardingLinkRoutes, { prefix: '/v1/onboarding-links' })
  await app.register(eventRoutes, { prefix: '/v1/events' })
}
