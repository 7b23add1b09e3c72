// GET /docs/json: the OpenAPI document of the internal API, behind the same bearer guard
// (or absent with INTERNAL_API_DOCS=false).
import type { FastifyInstance } from 'fastify'
import { addBearerGuard } from '../internal/guard.js'

export default async function docsRoutes (app: FastifyInstance): Promise<void> {
  addBearerGuard(app)
  app.get('/json', { schema: { hide: true } }, async () => app.swagger())
}
