// The application as a plugin, and the Fastify server it runs on (createServer): src/server.ts,
// the dev runner and the tests all build the server here and register the plugin on it.
import { randomUUID } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import type { Server } from 'node:http'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyServerOptions } from 'fastify'
import type { DestinationStream } from 'pino'
import helmet from '@fastify/helmet'
import swagger from '@fastify/swagger'
import type { Config } from './config.js'
import { UriTooLongError, errorBody } from './errors.js'
import { answerExpectationFailed, clientErrorHandler } from './client-errors.js'
import { ListenerPair, serves } from './listeners.js'
import { createLogger, RequestLogger } from './logger.js'
import configPlugin from '../plugins/config.js'
import errorsPlugin from '../plugins/errors.js'
import metricsPlugin from '../plugins/metrics.js'
import redisPlugin from '../plugins/redis.js'
import eventsPlugin from '../plugins/events.js'
import rateLimitPlugin from '../plugins/rate-limit.js'
import auditPlugin from '../plugins/audit.js'
import cybersourcePlugin from '../plugins/cybersource.js'
import storesPlugin from '../plugins/stores.js'
import onboardingPlugin from '../plugins/onboarding.js'
import tokenServicePlugin from '../plugins/token-service.js'
import keepAlivePlugin from '../plugins/keep-alive.js'
import healthRoutes from '../routes/health/index.js'
import oauthRoutes from '../routes/oauth/index.js'
import { failurePage, pageHeaders, shortReference } from './pages.js'
import { validatorCompiler } from './validation.js'
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

/**
 * The headers of every answer: its correlation id, and nosniff (JSON answers need only that; the
 * HTML pages get helmet's full set in the routes/oauth scope).
 */
function answerHeaders (reply: FastifyReply, id: string): FastifyReply {
  return reply.header('x-correlation-id', id).header('x-content-type-options', 'nosniff')
}

const trustHops = (hops: number) => (_address: string, hop: number): boolean => hop < hops

declare module 'fastify' {
  interface FastifyRequest {
    /** performance.now() when the request reached the app (for durations in log lines). */
    startedAt: number
  }
}

/**
 * The Fastify server, with the service's logger. Fastify itself is given no logger: with one, it
 * attaches 'finish' and 'error' listeners to every response and reads the clock twice, only for
 * its own request lines, which are off here. The root logger is the
 * server's `log` instead, and the app's first onRequest hook gives every request its logger
 * (`request.log`, `reply.log`), rather than a child logger factory: Fastify checks each logger
 * such a factory returns, seven methods looked up by name per request.
 */
export function createServer (config: Config, opts: { pretty?: boolean, logStream?: DestinationStream } = {}): FastifyInstance {
  const log = createLogger(config.logLevel, { pretty: opts.pretty, stream: opts.logStream }) as FastifyBaseLogger
  const internal = config.internalListener
  let pair: ListenerPair | undefined
  // INTERNAL_PORT: the second listener beside Fastify's server, built from the same options
  // (src/listeners.ts). Without it, neither option is set: one server, nothing on the hot path.
  const listeners: Pick<FastifyServerOptions<Server>, 'serverFactory' | 'rewriteUrl'> = internal === undefined
    ? {}
    : {
        serverFactory: (handler, options) => (pair = new ListenerPair(handler, options, internal, url => {
          log.info(`Internal listener at ${url} (internal API, /metrics, /docs)`)
        })),
        rewriteUrl: (req) => pair?.rewrite(req) ?? req.url ?? '/'
      }
  const server = Fastify({
    // One audit line per internal call is written by the routes; the default two lines per
    // request are off (they would also log the callback's query string).
    logController: new LogController({ disableRequestLogging: true }),
    genReqId: (req) => {
      // The browser routes make their own (routes/oauth, setGenReqId).
      const given = req.headers['x-correlation-id']
      return typeof given === 'string' && CORRELATION_ID.test(given) ? given : randomUUID()
    },
    bodyLimit: 16 * 1024,
    routerOptions: { maxParamLength: 128 },
    // Headers must arrive within 10 s (checked every second, not Node's default 30 s) and the
    // whole request within 60 s; an idle keep-alive connection closes after 10 s. No socket
    // inactivity timeout on top: it would re-arm a timer on every request and covers nothing
    // these do not.
    http: { headersTimeout: 10_000, connectionsCheckingInterval: 1000 },
    requestTimeout: 60_000,
    keepAliveTimeout: 10_000,
    clientErrorHandler,
    return503OnClosing: true,
    // A hop count as proxy-addr reads one (Fastify's types accept only the function form of it).
    trustProxy: typeof config.trustProxy === 'number' ? trustHops(config.trustProxy) : config.trustProxy,
    // A malformed URL or an over-long path parameter: a 400 with a fixed message (Fastify's own
    // echoes the URL, whose query may hold an authorization code), as a page on browser routes.
    // No hook runs for it: it sets the headers that the app's and the browser routes' give.
    frameworkErrors: (_err, request, reply) => {
      if (!request.url.startsWith('/oauth/')) {
        return answerHeaders((reply as FastifyReply).code(400), request.id).send(errorBody('invalid_request', 'The request URL is malformed', request.id))
      }
      // A page shows its id: the service's own, as on every browser route.
      const id = shortReference()
      return pageHeaders(answerHeaders((reply as FastifyReply).code(400), id)).type('text/html; charset=utf-8').send(failurePage('invalid_request', id, config.pages))
    },
    ...listeners
  })
  server.setValidatorCompiler(validatorCompiler)
  // An Expect header other than 100-continue: Node answers 417 itself, bare; in the error shape here.
  server.server.on('checkExpectation', answerExpectationFailed)
  if (pair !== undefined) {
    // Fastify gives its own server these; the internal listener gets the same.
    pair.internal.on('checkExpectation', answerExpectationFailed).on('clientError', clientErrorHandler)
  }
  server.log = log
  return server
}

/** The internal listener's server (INTERNAL_PORT), for printing its address; undefined without one. */
export function internalServer (server: FastifyInstance): ListenerPair['internal'] | undefined {
  return server.server instanceof ListenerPair ? server.server.internal : undefined
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
  const pair = fastify.server instanceof ListenerPair ? fastify.server : undefined
  if (opts.config.internalListener !== undefined && pair === undefined) {
    throw new Error('INTERNAL_PORT needs the server that createServer builds')
  }
  if (pair !== undefined) {
    // The guarantee behind the router's rewrite (ListenerPair.rewrite), on the route that matched:
    // whatever the URL's form, no route is reached through a listener that does not serve it.
    fastify.addHook('onRequest', (request, reply, done) => {
      const route = request.routeOptions.url
      if (route === undefined || serves(pair.isInternal(request.raw.socket), route.split('/')[1] ?? '')) done()
      else reply.callNotFound()
    })
  }
  // Every answer (errors included) gets answerHeaders as it is sent. Once the server is closing,
  // an answer also closes its connection: a request in flight at shutdown would otherwise leave
  // an idle keep-alive socket that holds the server's close up for keepAliveTimeout.
  let closing = false
  fastify.addHook('preClose', (done) => { closing = true; done() })
  fastify.addHook('onSend', (request, reply, payload, done) => {
    answerHeaders(reply, request.id)
    if (closing) reply.header('connection', 'close')
    done(null, payload)
  })
  await fastify.register(metricsPlugin)
  await fastify.register(redisPlugin)
  await fastify.register(eventsPlugin)
  await fastify.register(cybersourcePlugin)
  await fastify.register(storesPlugin)
  await fastify.register(onboardingPlugin)
  await fastify.register(tokenServicePlugin)
  await fastify.register(keepAlivePlugin)
  await fastify.register(auditPlugin)
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
    await scope.register(rateLimitPlugin)
    await scope.register(oauthRoutes)
  }, { prefix: '/oauth' })
  await fastify.register(internalRoutes, { prefix: '/internal' })
  await fastify.register(metricsRoutes, { prefix: '/metrics' })
  if (opts.config.internalApiDocs) await fastify.register(docsRoutes, { prefix: '/docs' })
}
