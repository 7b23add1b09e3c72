// Decorates `tokenStore` (encrypted per-merchant tokens) and `stateStore` (onboarding states).
// Needs `config` and `redis`.
import fp from 'fastify-plugin'
import { createKeyRing } from '../src/key-ring.js'
import { createTokenStore, type TokenStore } from '../src/token-store.js'
import { createStateStore, type StateStore } from '../src/state-store.js'

declare module 'fastify' {
  interface FastifyInstance {
    tokenStore: TokenStore
    stateStore: StateStore
  }
}

export default fp(async (app) => {
  const keyRing = createKeyRing(app.config.encryptionKeys)
  app.decorate('tokenStore', createTokenStore(app.redis, keyRing, app.redisKeys, { now: app.now, onKeyUnavailable: () => app.metrics.keyUnavailable.inc() }))
  app.decorate('stateStore', createStateStore(app.redis, app.redisKeys, { ttlSeconds: app.config.onboarding.stateTtlSeconds, now: app.now }))
}, { name: 'stores', dependencies: ['config', 'redis', 'metrics'] })
