// The application as a plugin, and the Fastify server it runs on (createServer): src/server.ts,
// the dev runner and the tests all build the server here and register the plugin on it.
import { randomBytes } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply } from 'fastify'
import type { DestinationStream } from 'pino'
import helmet from '@fastify/helmet'
import formbody from '@fastify/formbody'
import swagger from '@fastify/swagger'
import type { Config } from './config.js'
import { UriTooLongError } from './errors.js'
import { errorBody } from '../plugins/errors.js'
import { createLogger, RequestLogger } from './logger.js'
import configPlugin from '../plugins/config.js'
import errorsPlugin from '../plugins/errors.js'
import metricsPlugin from '../plugins/metrics.js'
import redisPlugin from '../plugins/redis.js'
import { registerBrowserRateLimit } from '../plugins/rate-limit.js'
import cybersourcePlugin from '../plugins/cybersource.js'
import storesPlugin from '../plugins/stores.js'
import onboardingPlugin from '../plugins/onboarding.js'
import tokenServicePlugin from '../plugins/token-service.js'
import healthRoutes from '../routes/health/index.js'
import oauthRoutes, { failurePage, pageHeaders } from '../routes/oauth/index.js'
import internalRoutes from '../routes/internal/index.js'
import metricsRoutes from '../routes/metrics/index.js'
import docsRoutes from '../routes/docs/index.js'

export interface AppOptions {
  config: Config
  /** The clock (tests move it). */
  now?: () => number
}

/** Query strings are bounded too (the callback's parameters are 2,048 characters at most). */
const MAX_URL_LENGTH = 8192
const CORRELATION_ID = /^[A-Za-z0-9._-]{8,64}$/

// Correlation ids are random, not a counter: they are shown on public pages and must not reveal
// request rates. 128 bits of the CSPRNG each, as 32 hex characters, cut from a batch drawn and
// hex-encoded at once: a slice of a flat string is itself flat (randomUUID's string is built by
// concatenation, and Node's header validation then has to flatten it), and one encoding per 256
// ids costs less than one per id.
const ID_CHARS = 32
const IDS_PER_BATCH = 256
let idBatch = ''
let idOffset = 0
function randomId (): string {
  if (idOffset === idBatch.length) {
    idBatch = randomBytes(ID_CHARS / 2 * IDS_PER_BATCH).toString('hex')
    idOffset = 0
  }
  idOffset += ID_CHARS
  return idBatch.slice(idOffset - ID_CHARS, idOffset)
}

/**
 * The headers of every answer: its correlation id, and nosniff (JSON answers need only that; the
 * HTML pages get helmet's full set in the routes/oauth scope).
 */
function answerHeaders (reply: FastifyReply, id: string): FastifyReply {
  return reply.header('x-correlation-id', id).header('x-content-type-options', 'nosniff')
}

declare module 'fastify' {
  interface FastifyRequest {
    /** performance.now() when the request reached the app (for durations in log lines). */
    startedAt: number
  }
}

/**
 * The Fastify server, with the service's logger. Fastify itself is given no logger: with one, it
 * attaches 'finish' and 'error' listeners to every response and reads the clock twice, only for
 * its own request lines, which are off here (README: Performance). The root logger is the
 * server's `log` instead, and the app's first onRequest hook gives every request its logger
 * (`request.log`, `reply.log`), rather than a child logger factory: Fastify checks each logger
 * such a factory returns, seven methods looked up by name per request.
 */
export function createServer (config: Config, opts: { pretty?: boolean, logStream?: DestinationStream } = {}): FastifyInstance {
  const log = createLogger(config.logLevel, { pretty: opts.pretty, stream: opts.logStream }) as FastifyBaseLogger
  const server = Fastify({
    // One audit line per internal call is written by the routes; the default two lines per
    // request are off (they would also log the callback's query string).
    logController: new LogController({ disableRequestLogging: true }),
    genReqId: (req) => {
      const given = req.headers['x-correlation-id']
      return typeof given === 'string' && CORRELATION_ID.test(given) ? given : randomId()
    },
    bodyLimit: 16 * 1024,
    routerOptions: { maxParamLength: 128 },
    // A request must arrive within 60 s (headers within Node's 60 s headersTimeout) and an idle
    // keep-alive connection closes after 10 s. No socket inactivity timeout on top: it re-armed a
    // timer on every request of the hot path and covered nothing these do not.
    requestTimeout: 60_000,
    keepAliveTimeout: 10_000,
    return503OnClosing: true,
    trustProxy: config.trustProxy,
    // Strict input: unknown body fields are rejected, not dropped, and no type is coerced (a
    // number is not a merchant id); query schemas therefore describe strings.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false } },
    // A malformed URL or an over-long path parameter: a 400 with a fixed message (Fastify's own
    // echoes the URL, whose query may hold an authorization code), as a page on browser routes.
    // No hook runs for it: it sets the headers that the app's and the browser routes' give.
    frameworkErrors: (_err, request, reply) => {
      const r = answerHeaders((reply as FastifyReply).code(400), request.id)
      return request.url.startsWith('/oauth/')
        ? pageHeaders(r).type('text/html; charset=utf-8').send(failurePage('invalid_request', request.id))
        : r.send(errorBody('invalid_request', 'The request URL is malformed', request.id))
    }
  })
  server.log = log
  return server
}

export default async function app (fastify: FastifyInstance, opts: AppOptions): Promise<void> {
  await fastify.register(configPlugin, opts)
  await fastify.register(errorsPlugin)
  fastify.decorateRequest('startedAt', 0)
  const root = fastify.log
  fastify.addHook('onRequest', (request, reply, done) => {
    request.startedAt = performance.now()
    // The request's logger, bound to its id (until here both are Fastify's silent one: createServer).
    const log = new RequestLogger(root, { reqId: request.id })
    request.log = log
    reply.log = log
    done(request.url.length > MAX_URL_LENGTH ? new UriTooLongError() : undefined)
  })
  // Every answer sent through Fastify (errors included) gets answerHeaders as it is sent, not as
  // the request arrives: a successful lookup is answered past Fastify's send and names them
  // itself (routes/internal/v1/merchants), and setting them first for it was about 2 % of its
  // instructions (README, Performance).
  fastify.addHook('onSend', (request, reply, payload, done) => {
    answerHeaders(reply, request.id)
    done(null, payload)
  })
  await fastify.register(formbody)
  await fastify.register(metricsPlugin)
  await fastify.register(redisPlugin)
  await fastify.register(cybersourcePlugin)
  await fastify.register(storesPlugin)
  await fastify.register(onboardingPlugin)
  await fastify.register(tokenServicePlugin)
  if (opts.config.internalApiDocs) {
    // Only tagged routes (the internal API) are documented.
    await fastify.register(swagger, {
      hideUntagged: true,
      openapi: {
        info: { title: 'cybs-oauth-broker internal API', version: '1' },
        components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } }
      }
    })
  }
  await fastify.register(healthRoutes, { prefix: '/health' })
  await fastify.register(async (scope) => {
    await scope.register(helmet)
    await registerBrowserRateLimit(scope)
    await scope.register(oauthRoutes)
  }, { prefix: '/oauth' })
  await fastify.register(internalRoutes, { prefix: '/internal' })
  await fastify.register(metricsRoutes, { prefix: '/metrics' })
  if (opts.config.internalApiDocs) await fastify.register(docsRoutes, { prefix: '/docs' })
}
