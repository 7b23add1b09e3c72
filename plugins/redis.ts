// Decorates `redis` (one ioredis client: standalone, Sentinel or Cluster) and `redisKeys`.
// Needs `config`. Waits briefly for Redis at boot, then starts degraded (readiness 503) rather
// than refusing to start; closes the client on shutdown.
import fp from 'fastify-plugin'
import { createRedisClient, waitReady, type RedisClient, redisErrorReason } from '../src/redis-client.js'
import { createRedisKeys, type RedisKeys } from '../src/redis-keys.js'

declare module 'fastify' {
  interface FastifyInstance {
    redis: RedisClient
    redisKeys: RedisKeys
  }
}

export default fp(async (app) => {
  const redis = createRedisClient(app.config.redis)
  // Errors surface on the request path as 503s; the client reconnects by itself. An outage is
  // logged once (a lost connection emits 'close', a refused reconnect 'error'), and so is the recovery.
  let down = false
  let closing = false
  const lost = (reason: string): void => {
    if (!down) app.log.error({ reason }, 'redis connection error')
    down = true
  }
  redis.on('error', (err: Error) => { lost(redisErrorReason(err)) })
  redis.on('close', () => { if (!closing) lost('connection closed') })
  redis.on('ready', () => {
    if (down) app.log.info('redis connection restored')
    down = false
  })
  app.decorate<RedisClient>('redis', redis)
  app.decorate('redisKeys', createRedisKeys(app.config.redisKeyPrefix))
  if (!await waitReady(redis, 5000)) app.log.warn('redis is not reachable; starting degraded')
  app.addHook('onClose', async () => {
    closing = true
    await redis.quit().catch(() => redis.disconnect())
  })
}, { name: 'redis', dependencies: ['config'] })
