// Limits of the browser-facing routes, registered inside the encapsulated /oauth scope so that
// they apply only there (its hooks stay in that scope). Needs `config`, `redis` and `metrics`.
// - The rate limit: a Redis-backed @fastify/rate-limit, so it holds across replicas
//   (RATE_LIMIT_MAX per RATE_LIMIT_WINDOW_SECONDS). Routes that start an onboarding and the other
//   routes (the callback) count in separate buckets: flooding /oauth/connect never throttles the
//   callbacks of browsers coming back from CyberSource.
// - The state quota (src/state-quota.ts): a route that starts an onboarding is refused once its
//   client, or all clients together, started STATE_MAX_PER_CLIENT / STATE_MAX_TOTAL states within
//   STATE_TTL_SECONDS, which bounds what the public edge can make Redis hold.
// A client is the bucket of request.ip (src/client-bucket.ts): an IPv4 address or an IPv6 /64, as
// TRUST_PROXY lets Fastify read it, never an X-Forwarded-For entry that no trusted proxy wrote.
import fp from 'fastify-plugin'
import rateLimit from '@fastify/rate-limit'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { RateLimitedError } from '../src/errors.js'
import { bucketOf } from '../src/client-bucket.js'
import { createStateQuota } from '../src/state-quota.js'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The route starts an onboarding (a new state): rate-limited and capped as such. */
    startsOnboarding?: boolean
    /**
     * The route calls admitStart itself once it knows it will start one (an onboarding link: not
     * for an unknown, expired or connected link, which must not use up the cap).
     */
    admitsStartItself?: boolean
  }
  interface FastifyInstance {
    /** Counts a start against the state caps; throws RateLimitedError (429, Retry-After) when over. */
    admitStart: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
  }
}

const startsOnboarding = (request: FastifyRequest): boolean => request.routeOptions.config.startsOnboarding === true

export default fp(async (scope) => {
  const { max, windowSeconds } = scope.config.rateLimit
  await scope.register(rateLimit, {
    max,
    timeWindow: windowSeconds * 1000,
    redis: scope.redis,
    nameSpace: scope.redisKeys.rateLimit,
    keyGenerator: (request) => `${startsOnboarding(request) ? 'start' : 'other'}:${bucketOf(request.ip)}`,
    // Redis away: let the request through; the route itself then answers 503.
    skipOnError: true,
    errorResponseBuilder: () => new RateLimitedError()
  })

  const quota = createStateQuota(scope.redis, scope.redisKeys, {
    ...scope.config.stateLimits,
    windowSeconds: scope.config.onboarding.stateTtlSeconds,
    now: scope.now
  })
  // preHandler: after the rate limit and validation, so only a request that would really start a
  // state is counted.
  const admitStart = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    const admission = await quota.admit(bucketOf(request.ip))
    if (admission.ok) return
    scope.metrics.statesRefused.inc({ scope: admission.scope })
    reply.header('retry-after', admission.retryAfterSeconds)
    throw new RateLimitedError()
  }
  scope.decorate('admitStart', admitStart)
  scope.addHook('preHandler', async (request, reply) => {
    if (startsOnboarding(request) && request.routeOptions.config.admitsStartItself !== true) await admitStart(request, reply)
  })
}, { name: 'browser-rate-limit', dependencies: ['config', 'redis', 'metrics'] })
