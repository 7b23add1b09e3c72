// /internal: the bearer guard (encapsulated here, not global) and the audit line of every call:
// caller (bound to the request's logger), merchant id, outcome; never a token.
import type { FastifyInstance } from 'fastify'
import { addBearerGuard } from './guard.js'
import merchantRoutes from './v1/merchants/index.js'
import onboardingLinkRoutes from './v1/onboarding-links.js'

const LOOKUP_ROUTE = '/internal/v1/merchants/:merchantId/access-token'

export default async function internalRoutes (app: FastifyInstance): Promise<void> {
  addBearerGuard(app)

  app.addHook('onResponse', async (request, reply) => {
    // The merchant id is a path parameter, except for onboarding links (body).
    const bodyMerchantId = (request.body as { merchant_id?: unknown } | undefined)?.merchant_id
    const merchantId = (request.params as { merchantId?: string } | undefined)?.merchantId ??
      (typeof bodyMerchantId === 'string' ? bodyMerchantId : undefined)
    const outcome = request.errorCode ?? 'ok'
    const route = request.routeOptions.url
    if (route === LOOKUP_ROUTE) app.metrics.lookups.inc({ outcome })
    request.log.info({
      merchant_id: merchantId,
      route,
      method: request.method,
      status: reply.statusCode,
      outcome,
      duration_ms: Math.round(reply.elapsedTime * 10) / 10
    }, 'internal api call')
  })

  await app.register(merchantRoutes, { prefix: '/v1/merchants' })
  await app.register(onboardingLinkRoutes, { prefix: '/v1/onboarding-links' })
}
