// /health/live and /health/ready (Redis round trip, bounded so it answers within a second).
import type { FastifyInstance } from 'fastify'

const READY_TIMEOUT_MS = 500

export default async function healthRoutes (app: FastifyInstance): Promise<void> {
  app.get('/live', async () => ({ status: 'ok' }))

  app.get('/ready', async (request, reply) => {
    let timer: NodeJS.Timeout | undefined
    try {
      // With no offline queue, a disconnected client fails at once; a hung one hits the timeout.
      await Promise.race([
        app.redis.ping(),
        new Promise((_resolve, reject) => { timer = setTimeout(() => reject(new Error('timeout')), READY_TIMEOUT_MS) })
      ])
      return { status: 'ready' }
    } catch (err) {
      return await reply.code(503).send({ status: 'unavailable', reason: `redis: ${(err as Error).message === 'timeout' ? 'no answer within 500 ms' : 'unreachable'}` })
    } finally {
      clearTimeout(timer)
    }
  })
}
