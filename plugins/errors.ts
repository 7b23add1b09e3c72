// The root error handler: maps domain errors and validation failures to the JSON error shape
// { error: { code, message, correlation_id } } of docs/api.md and masks every other 5xx.
import fp from 'fastify-plugin'
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import { errorBody } from '../src/errors.js'

export const DOMAIN_CODES = new Set([
  'invalid_request', 'unauthorized', 'merchant_not_found', 'onboarding_not_found', 'reauthorization_required',
  'rate_limited', 'upstream_unavailable', 'storage_unavailable', 'encryption_key_unavailable'
])

/** The status and public code/message of any error; never the details of an unexpected one. */
export function classifyError (err: FastifyError): { status: number, code: string, message: string } {
  // @fastify/error upper-cases codes; the wire codes (docs/api.md) are lower case.
  const domainCode = typeof err.code === 'string' ? err.code.toLowerCase() : ''
  if (DOMAIN_CODES.has(domainCode)) return { status: err.statusCode ?? 500, code: domainCode, message: err.message }
  if (err.validation !== undefined) return { status: 400, code: 'invalid_request', message: err.message }
  const status = err.statusCode ?? 500
  if (status >= 400 && status < 500) return { status, code: 'invalid_request', message: err.message }
  return { status: 500, code: 'internal_error', message: 'Internal error' }
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The stable error code the request ended with (for the audit line). */
    errorCode: string | undefined
  }
}

export default fp(async (app) => {
  app.decorateRequest('errorCode', undefined)
  app.setErrorHandler(async (err: FastifyError, request: FastifyRequest, reply: FastifyReply) => {
    const { status, code, message } = classifyError(err)
    request.errorCode = code
    if (status >= 500) request.log.error({ err }, 'request failed')
    return await reply.code(status).send(errorBody(code, message, request.id))
  })
  app.setNotFoundHandler(async (request, reply) => {
    return await reply.code(404).send(errorBody('not_found', 'Route not found', request.id))
  })
}, { name: 'errors' })
