// /internal: the bearer guard (encapsulated here, not global) and the audit trail of every call
// (plugins/audit.ts). Routes say in their `config` what the audit needs: `lookup` marks the
// access-token lookup, whose successful GETs are summarized and whose outcomes are counted in
// metrics.
// The hook is callback-style: it runs on every lookup.
import type { FastifyInstance } from 'fastify'
import { addBearerGuard } from './guard.js'
import merchantRoutes from './v1/merchants/index.js'
import onboardingLinkRoutes from './v1/onboarding-links.js'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The access-token lookup (audit summaries, lookup metrics). */
    lookup?: boolean
  }
}

export default async function internalRoutes (app: FastifyInstance): Promise<void> {
  addBearerGuard(app)

  // On send, not on response: an onResponse hook makes Fastify listen on every response.
  app.addHook('onSend', (request, reply, payload, done) => {
    const { url = '', config } = request.routeOptions
    const outcome = request.errorCode ?? 'ok'
    // The merchant id is a path parameter, except for onboarding links (body).
    const bodyMerchantId = (request.body as { merchant_id?: unknown } | undefined)?.merchant_id
    const merchantId = (request.params as { merchantId?: string } | undefined)?.merchantId ??
      (typeof bodyMerchantId === 'string' ? bodyMerchantId : undefined)
    if (config.lookup === true) app.metrics.countLookup(outcome)
    // A HEAD hands out no token: it keeps a line of its own.
    if (config.lookup === true && outcome === 'ok' && request.method === 'GET') app.audit.lookup(request, url, merchantId)
    else app.audit.call(request, url, reply.statusCode, outcome, merchantId)
    done(null, payload)
  })

  await app.register(merchantRoutes, { prefix: '/v1/merchants' })
  await app.register(onboardingLinkRoutes, { prefix: '/v1/onboarding-links' })
}
