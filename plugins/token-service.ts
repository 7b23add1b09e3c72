// Decorates `tokenService` (fresh access tokens, single-flight refresh across replicas, an access
// token cache bounded by TOKEN_CACHE_MAX_ENTRIES).
// Needs the stores, the token client and Redis; owns a subscriber connection. On close it
// waits for refreshes under way so that tokens CyberSource already issued get stored.
import fp from 'fastify-plugin'
import { createSubscriber } from '../src/redis-client.js'
import { createTokenService, type TokenService } from '../src/token-service.js'

declare module 'fastify' {
  interface FastifyInstance {
    tokenService: TokenService
  }
}

export default fp(async (app) => {
  const subscriber = createSubscriber(app.redis)
  subscriber.on('error', () => {}) // the main client already reports outages
  const service = createTokenService({
    redis: app.redis,
    subscriber,
    keys: app.redisKeys,
    store: app.tokenStore,
    client: app.tokenClient,
    log: app.log.child({ component: 'token-service' }),
    now: app.now,
    answerWithinMs: app.config.cybs.timeoutMs + 2000,
    maxEntries: app.config.tokenCache.maxEntries,
    lifecycle: app.events,
    events: {
      refresh: (outcome, seconds) => {
        app.metrics.refreshes.inc({ outcome })
        app.metrics.refreshDuration.observe({ outcome }, seconds)
      },
      lockWait: (seconds, outcome) => {
        app.metrics.lockWaits.inc({ outcome })
        app.metrics.lockWaitDuration.observe({ outcome }, seconds)
      }
    }
  })
  app.decorate('tokenService', service)
  // Started without waiting: a Redis that is down at boot must not block the service.
  service.start().catch((err: unknown) => app.log.warn({ err }, 'token change subscription failed; relying on polling'))
  // onClose, not preClose: after the server stopped taking requests and keep-alive stopped (both
  // in preClose), so no refresh starts after this waits; before Redis, the client and the event
  // log close (their onClose hooks run after this one, being registered before it).
  app.addHook('onClose', async () => { await service.close() })
}, { name: 'token-service', dependencies: ['config', 'redis', 'stores', 'cybersource', 'metrics', 'events'] })
