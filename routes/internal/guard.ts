// The bearer guard of the internal API (INTERNAL_API_KEYS, constant-time), as an encapsulated
// onRequest hook (callback-style: it runs on every lookup): the caller's name is set on the
// request and bound to its logger.
import type { FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
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
  app.addHook('onRequest', (request, reply, done) => {
    const caller = verify(request.headers.authorization)
    if (caller === undefined) {
      reply.header('www-authenticate', 'Bearer')
      done(new UnauthorizedError())
      return
    }
    request.caller = caller
    // Bound to the request's own logger (a RequestLogger, src/app.ts): a second child logger per
    // call cost more than the rest of the guard.
    const log = request.log as Logger
    log.setBindings({ caller })
    done()
  })
}
