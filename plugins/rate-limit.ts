// Rate limiting of the browser-facing routes: a Redis-backed @fastify/rate-limit, so the limit
// holds across replicas (RATE_LIMIT_MAX per RATE_LIMIT_WINDOW_SECONDS and client address).
// Registered inside the encapsulated /oauth scope, so it limits only those routes. Needs
// `config` and `redis`.
import fp from 'fastify-plugin'
import rateLimit from '@fastify/rate-limit'
import { RateLimitedError } from '../src/errors.js'

export default fp(async (scope) => {
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
}, { name: 'browser-rate-limit', dependencies: ['config', 'redis'] })
