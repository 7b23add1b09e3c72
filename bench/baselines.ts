// Comparison servers of the benchmark, one per child process, the kind picked by argv:
//   static <port>  bare Fastify, logger off, one route answering BENCH_STATIC_BODY (the bytes of a
//                  real lookup response) pre-serialized: the ceiling of a lookup on this machine
//   hello <port>   the Fastify hello world ({ hello: 'world' }), logger off
//   naive <port>   what the lookup would cost without the in-memory cache: bearer check, Redis
//                  HGETALL and AES-GCM decryption per call, Fastify's two request log lines
// Every kind binds 127.0.0.1 and answers GET /internal/v1/merchants/:merchantId/access-token.
import Fastify, { type FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import { createApiKeyVerifier } from '../src/api-keys.js'
import { createKeyRing } from '../src/key-ring.js'
import { loggerOptions } from '../src/logger.js'
import { createRedisKeys } from '../src/redis-keys.js'
import { createTokenStore } from '../src/token-store.js'

const BASELINE_KINDS = ['static', 'hello', 'naive'] as const
type BaselineKind = typeof BASELINE_KINDS[number]

const ROUTE = '/internal/v1/merchants/:merchantId/access-token'

function required (name: string): string {
  const value = process.env[name]
  if (value === undefined || value === '') throw new Error(`${name} is required`)
  return value
}

function staticApp (): FastifyInstance {
  const body = required('BENCH_STATIC_BODY')
  const app = Fastify({ logger: false })
  app.get(ROUTE, async (_request, reply) => await reply.type('application/json; charset=utf-8').send(body))
  return app
}

function helloApp (): FastifyInstance {
  const app = Fastify({ logger: false })
  app.get(ROUTE, async () => ({ hello: 'world' }))
  return app
}

function naiveApp (): FastifyInstance {
  // Same formats as TOKEN_ENCRYPTION_KEYS / INTERNAL_API_KEYS, one entry each.
  const [kid, key] = required('TOKEN_ENCRYPTION_KEYS').split(':')
  const [caller, secret] = required('INTERNAL_API_KEYS').split(':')
  const verify = createApiKeyVerifier([{ caller, secret }])
  const keys = createRedisKeys(process.env.REDIS_KEY_PREFIX ?? 'cybs:')
  const redis = new Redis(required('REDIS_URL'), { maxRetriesPerRequest: 1 })
  const store = createTokenStore(redis, createKeyRing([{ kid, key: Buffer.from(key, 'base64') }]), keys)
  // Fastify's default request logging: an "incoming request" and a "request completed" line.
  const app = Fastify({ logger: loggerOptions('info') })
  app.addHook('onClose', async () => { await redis.quit() })
  app.get<{ Params: { merchantId: string } }>(ROUTE, async (request, reply) => {
    if (verify(request.headers.authorization) === undefined) return await reply.code(401).send({ error: 'unauthorized' })
    const record = await store.get(request.params.merchantId)
    if (record === undefined) return await reply.code(404).send({ error: 'not found' })
    reply.header('cache-control', 'no-store')
    return {
      merchant_id: record.merchantId,
      access_token: record.accessToken,
      token_type: 'Bearer',
      expires_at: new Date(record.accessTokenExpiresAt).toISOString(),
      expires_in: Math.floor((record.accessTokenExpiresAt - Date.now()) / 1000),
      scope: record.scope
    }
  })
  return app
}

const kind = process.argv[2] as BaselineKind
const port = Number(process.argv[3])
if (!BASELINE_KINDS.includes(kind) || !Number.isInteger(port) || port <= 0) {
  process.stderr.write(`usage: node dist/bench/baselines.js <${BASELINE_KINDS.join('|')}> <port>\n`)
  process.exit(2)
}

const app = kind === 'static' ? staticApp() : kind === 'hello' ? helloApp() : naiveApp()

let closing = false
const close = (): void => {
  if (closing) return
  closing = true
  app.close().then(() => process.exit(0), () => process.exit(1))
  setTimeout(() => process.exit(1), 3000).unref()
}
process.once('SIGTERM', close)
process.once('SIGINT', close)
// The runner was killed without stopping us: do not live on as an orphan.
const parent = process.ppid
setInterval(() => { if (process.ppid !== parent) close() }, 500).unref()

await app.listen({ host: '127.0.0.1', port })
