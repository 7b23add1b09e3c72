// /internal/v1/events: the lifecycle event log, oldest first, paged by event id (`after`).
import type { FastifyInstance } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { EventListQuerySchema, EventListSchema, errors } from '../../../src/schemas.js'

export default async function eventRoutes (fastify: FastifyInstance): Promise<void> {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>()

  app.get('/', {
    schema: {
      tags: ['events'],
      security: [{ bearer: [] }],
      summary: 'Lifecycle events after a given one (or from the oldest kept)',
      querystring: EventListQuerySchema,
      response: { 200: EventListSchema, ...errors(400, 401, 503) }
    }
  }, async (request) => {
    const { items, nextAfter } = await app.events.list(request.query.after, request.query.limit)
    return { items, next_after: nextAfter }
  })
}
