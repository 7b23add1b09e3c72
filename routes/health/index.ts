// /health/live and /health/ready. Ready means Redis answers (a round trip bounded so the answer
// comes within a second) and the event loop is not overloaded (@fastify/under-pressure, scoped to
// these routes): a replica that cannot keep up reports itself unready, so the load balancer
// sends its traffic elsewhere until it recovers. Live is only "the process runs".
import type { FastifyInstance } from 'fastify'
import underPressure from '@fastify/under-pressure'

const READY_TIMEOUT_MS = 500
/** An event loop this late could not answer readiness within a second. */
const MAX_EVENT_LOOP_DELAY_MS = 1000

export default async function healthRoutes (app: FastifyInstance): Promise<void> {
  await app.register(underPressure, {
    maxEventLoopDelay: MAX_EVENT_LOOP_DELAY_MS,
    sampleInterval: 250,
    // Never refuse a health request: readiness reports the pressure, liveness ignores it.
    pressureHandler: () => undefined
  })

  app.get('/live', async () => ({ status: 'ok' }))

  app.get('/ready', async (request, reply) => {
    if (app.isUnderPressure()) {
      return await reply.code(503).send({ status: 'unavailable', reason: 'event loop overloaded' })
    }
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
