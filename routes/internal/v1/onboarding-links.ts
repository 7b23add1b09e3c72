// /internal/v1/onboarding-links: links a partner portal makes for one of its users (the URL passes
// through this service, which binds the browser), and their status.
import type { FastifyInstance } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import type { Link } from '../../../src/link-store.js'
import { OnboardingNotFoundError } from '../../../src/errors.js'
import {
  LinkIdParamsSchema, OnboardingLinkBodySchema, OnboardingLinkSchema, OnboardingLinkStatusSchema, errors
} from '../../../src/schemas.js'

const iso = (ms: number): string => new Date(ms).toISOString()

export default async function onboardingLinkRoutes (fastify: FastifyInstance): Promise<void> {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>()
  const tags = ['onboarding']
  const security = [{ bearer: [] }]
  const linkBase = `${app.config.publicBaseUrl}/oauth/links/`

  app.post('/', {
    schema: {
      tags,
      security,
      summary: 'Create an onboarding link for a portal user',
      body: OnboardingLinkBodySchema,
      response: { 201: OnboardingLinkSchema, ...errors(400, 401, 503) }
    },
    // `{ merchant_id?, reference? }`: a POST without a body asks for an unbound link, like `{}`.
    preValidation: async (request) => { request.body ??= {} }
  }, async (request, reply) => {
    const { link, key } = await app.linkStore.create({ merchantId: request.body.merchant_id, reference: request.body.reference })
    request.log.info({ merchant_id: link.merchantId ?? undefined, onboarding_id: link.id }, 'onboarding link created')
    app.metrics.onboardingLinks.inc({ event: 'created' })
    return await reply.code(201).send({
      id: link.id,
      url: `${linkBase}${link.id}/${key}`,
      expires_at: iso(link.expiresAt),
      merchant_id: link.merchantId,
      reference: link.reference
    })
  })

  app.get('/:id', {
    schema: {
      tags,
      security,
      summary: 'Status of an onboarding link',
      params: LinkIdParamsSchema,
      response: { 200: OnboardingLinkStatusSchema, ...errors(400, 401, 404, 503) }
    }
  }, async (request) => {
    const link: Link | undefined = await app.linkStore.get(request.params.id)
    if (link === undefined) throw new OnboardingNotFoundError()
    return {
      id: link.id,
      status: link.status,
      merchant_id: link.merchantId,
      reference: link.reference,
      failure_reason: link.failureReason,
      created_at: iso(link.createdAt),
      expires_at: iso(link.expiresAt),
      completed_at: link.completedAt === null ? null : iso(link.completedAt)
    }
  })
}
