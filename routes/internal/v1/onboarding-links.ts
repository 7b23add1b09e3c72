// POST /internal/v1/onboarding-links: an authorize URL (with a fresh state) for a partner portal.
import type { FastifyInstance } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { OnboardingLinkBodySchema, OnboardingLinkSchema, errors } from '../../../src/schemas.js'

export default async function onboardingLinkRoutes (fastify: FastifyInstance): Promise<void> {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>()
  app.post('/', {
    schema: {
      tags: ['onboarding'],
      security: [{ bearer: [] }],
      summary: 'Create a connect link for a merchant',
      body: OnboardingLinkBodySchema,
      response: { 201: OnboardingLinkSchema, ...errors(400, 401, 503) }
    },
    // `{ merchant_id? }`: a POST without a body asks for an unbound link, like `{}`.
    preValidation: async (request) => { request.body ??= {} }
  }, async (request, reply) => {
    const { url, expiresAt } = await app.onboarding.start(request.body.merchant_id)
    request.log.info({ merchant_id: request.body.merchant_id }, 'onboarding link created')
    return await reply.code(201).send({ url, expires_at: expiresAt.toISOString() })
  })
}
