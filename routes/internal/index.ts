// /internal: the bearer guard (encapsulated here, not global) and the audit line of every call:
// caller (bound to the request's logger), merchant id, outcome; never a token.
import type { FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import { createApiKeyVerifier } from '../../src/api-keys.js'
import { UnauthorizedError } from '../../src/errors.js'
import merchantRoutes from './v1/merchants/index.js'
import onboardingLinkRoutes from './v1/onboarding-links.js'

declare module 'fastify' {
  interface FastifyRequest {
    caller: string
  }
}

export default async function internalRoutes (app: FastifyInstance): Promise<void> {
  const verify = createApiKeyVerifier(app.config.internalApiKeys)
  app.decorateRequest('caller', '')

  app.addHook('onRequest', async (request) => {
    const caller = verify(request.headers.authorization)
    if (caller === undefined) throw new UnauthorizedError()
    request.caller = caller
    // Bound to the request's own logger (Fastify makes one per request): a second child logger
    // per call cost more than the rest of the guard.
    const log = request.log as Logger
    if (typeof log.setBindings === 'function') log.setBindings({ caller })
    else request.log = request.log.child({ caller })
  })

  app.addHook('onResponse', async (request, reply) => {
    // The merchant id is a path parameter, except for onboarding links (body).
    const bodyMerchantId = (request.body as { merchant_id?: unknown } | undefined)?.merchant_id
    const merchantId = (request.params as { merchantId?: string } | undefined)?.merchantId ??
      (typeof bodyMerchantId === 'string' ? bodyMerchantId : undefined)
    request.log.info({
      merchant_id: merchantId,
      route: request.routeOptions.url,
      method: request.method,
      status: reply.statusCode,
      outcome: request.errorCode ?? 'ok',
      duration_ms: Math.round(reply.elapsedTime * 10) / 10
    }, 'internal api call')
  })

  await app.register(merchantRoutes, { prefix: '/v1/merchants' })
  await app.register(onboardingLinkRoutes, { prefix: '/v1/onboarding-links' })
}
