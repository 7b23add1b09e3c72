// The bearer guard of the internal API (INTERNAL_API_KEYS, constant-time), as an encapsulated
// onRequest hook: the caller's name is set on the request and bound to its logger.
import type { FastifyInstance } from 'fastify'
import { createApiKeyVerifier } from '../../src/api-keys.js'
import { UnauthorizedError } from '../../src/errors.js'

declare module 'fastify' {
  interface FastifyRequest {
    caller: string
  }
}

export function addBearerGuard (app: FastifyInstance): void {
  const verify = createApiKeyVerifier(app.config.internalApiKeys)
  if (!app.hasRequestDecorator('caller')) app.decorateRequest('caller', '')
  app.addHook('onRequest', async (request) => {
    const caller = verify(request.headers.authorization)
    if (caller === undefined) throw new UnauthorizedError()
    request.caller = caller
    request.log = request.log.child({ caller })
  })
}
