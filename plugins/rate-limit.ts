// Rate limiting of the browser-facing routes: a Redis-backed @fastify/rate-limit (so the limit
// holds across replicas), registered inside the encapsulated /oauth scope, not globally.
import type { FastifyInstance } from 'fastify'
import rateLimit from '@fastify/rate-limit'
import { RateLimitedError } from '../src/errors.js'

export async function registerBrowserRateLimit (scope: FastifyInstance): Promise<void> {
  const { max, windowSeconds } = scope.config.rateLimit
  await scope.register(rateLimit, {
    max,
    timeWindow: windowSeconds * 1000,
    redis: scope.redis,
    nameSpace: scope.redisKeys.rateLimit,
    // Redis away: let the request through; the route itself then answers 503.
    skipOnError: true,
    errorResponseBuilder: () => new RateLimitedError()
  })
}
