// Decorates `tokenStore` (encrypted per-merchant tokens; every write also keeps the merchant's
// place in the keep-alive schedule), `keepAliveSchedule`, `stateStore` (onboarding states) and
// `linkStore` (onboarding links).
// Needs `config` and `redis`.
import fp from 'fastify-plugin'
import { createKeyRing } from '../src/key-ring.js'
import { createTokenStore, type TokenStore } from '../src/token-store.js'
import { createStateStore, type StateStore } from '../src/state-store.js'
import { createLinkStore, type LinkStore } from '../src/link-store.js'
import { createKeepAliveSchedule, withKeepAlive, type KeepAliveSchedule } from '../src/keep-alive-schedule.js'

declare module 'fastify' {
  interface FastifyInstance {
    tokenStore: TokenStore
    stateStore: StateStore
    linkStore: LinkStore
    keepAliveSchedule: KeepAliveSchedule
  }
}

export default fp(async (app) => {
  const keyRing = createKeyRing(app.config.encryptionKeys)
  const schedule = createKeepAliveSchedule(app.redis, app.redisKeys, { renewBeforeSeconds: app.config.keepAlive.renewBeforeSeconds, now: app.now })
  const store = createTokenStore(app.redis, keyRing, app.redisKeys, { now: app.now, onKeyUnavailable: () => app.metrics.keyUnavailable.inc() })
  app.decorate('keepAliveSchedule', schedule)
  app.decorate('tokenStore', withKeepAlive(store, schedule, app.log.child({ component: 'keep-alive' })))
  app.decorate('stateStore', createStateStore(app.redis, app.redisKeys, { ttlSeconds: app.config.onboarding.stateTtlSeconds, now: app.now }))
  app.decorate('linkStore', createLinkStore(app.redis, app.redisKeys, { ttlSeconds: app.config.links.ttlSeconds, now: app.now }))
}, { name: 'stores', dependencies: ['config', 'redis', 'metrics'] })
