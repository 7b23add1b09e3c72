// build(t, …): the app registered on a fresh server built as in production (createServer),
// against a private redis-server and the simulator over real HTTP, with every log line captured
// for assertions.
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { Writable } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { loadConfig, type Config } from '../src/config.js'
import app, { createServer } from '../src/app.js'
import { TOKEN_PATH, buildSimulator, type Simulator, type SimulatorOptions } from '../src/simulator/app.js'
import { startRedis, type TestRedis } from './helpers/redis.js'

interface Teardown { teardown: (fn: () => unknown) => void }

export const CLIENT_ID = 'test-partner-client'

/** Fresh secrets per call, so a test can search the logs and Redis for them. */
export function secrets (): { clientSecret: string, encryptionKey: string, apiSecret: string, otherApiSecret: string } {
  return {
    clientSecret: `cs-${randomBytes(18).toString('base64url')}`,
    encryptionKey: randomBytes(32).toString('base64'),
    apiSecret: `payments-${randomBytes(24).toString('base64url')}`,
    otherApiSecret: `reports-${randomBytes(24).toString('base64url')}`
  }
}

export interface LogCapture {
  stream: Writable
  text: () => string
  lines: () => Array<Record<string, unknown>>
}

export function captureLogs (): LogCapture {
  const chunks: string[] = []
  const stream = new Writable({
    write (chunk: Buffer, _enc, cb) { chunks.push(chunk.toString()); cb() }
  })
  return {
    stream,
    text: () => chunks.join(''),
    lines: () => chunks.join('').split('\n').filter(l => l !== '').map(l => JSON.parse(l) as Record<string, unknown>)
  }
}

export async function startSimulator (t: Teardown, opts: Partial<SimulatorOptions> & { clientSecret: string }): Promise<Simulator & { url: string }> {
  const sim = buildSimulator({ clientId: CLIENT_ID, ...opts })
  await sim.app.listen({ host: '127.0.0.1', port: 0 })
  t.teardown(async () => await sim.app.close())
  const { port } = sim.app.server.address() as { port: number }
  return { ...sim, url: `${opts.https === undefined ? 'http' : 'https'}://127.0.0.1:${port}` }
}

export interface BuildOptions {
  /** Extra or overriding environment variables. */
  env?: Record<string, string>
  redis?: TestRedis
  simulator?: Simulator & { url: string }
  simulatorOptions?: Partial<SimulatorOptions>
  secrets?: ReturnType<typeof secrets>
  now?: () => number
  /** Routes of the test's own, registered beside the app (its root hooks apply to them). */
  routes?: (app: FastifyInstance) => Promise<void>
}

export interface Built {
  app: FastifyInstance
  config: Config
  redis: TestRedis
  sim: Simulator & { url: string }
  secrets: ReturnType<typeof secrets>
  logs: LogCapture
  /** Authorization header of the configured internal API caller `payments`. */
  auth: { authorization: string }
}

export function envFor (s: ReturnType<typeof secrets>, redisUrl: string, simUrl: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    CYBS_ENVIRONMENT: 'simulator',
    CYBS_CLIENT_ID: CLIENT_ID,
    CYBS_CLIENT_SECRET: s.clientSecret,
    CYBS_AUTHORIZE_URL: `${simUrl}/ebc2/oauth/authorize`,
    CYBS_TOKEN_URL: `${simUrl}/oauth2/v3/token`,
    CYBS_TIMEOUT_MS: '2000',
    REDIS_URL: redisUrl,
    TOKEN_ENCRYPTION_KEYS: `k1:${s.encryptionKey}`,
    INTERNAL_API_KEYS: `payments:${s.apiSecret},reports:${s.otherApiSecret}`,
    LOG_LEVEL: 'info',
    ...extra
  }
}

export async function build (t: Teardown, opts: BuildOptions = {}): Promise<Built> {
  const s = opts.secrets ?? secrets()
  const redis = opts.redis ?? await startRedis(t)
  const sim = opts.simulator ?? await startSimulator(t, { clientSecret: s.clientSecret, ...opts.simulatorOptions })
  const config = loadConfig(envFor(s, redis.url, sim.url, opts.env))
  const logs = captureLogs()
  const instance = createServer(config, { logStream: logs.stream })
  // fastify-plugin exposes the app's decorators (tokenStore, redis…) to the tests.
  await instance.register(fp(app), { config, now: opts.now })
  if (opts.routes !== undefined) await instance.register(opts.routes)
  await instance.ready()
  t.teardown(async () => await instance.close())
  return { app: instance, config, redis, sim, secrets: s, logs, auth: { authorization: `Bearer ${s.apiSecret}` } }
}

/** The `name=value` of a response's Set-Cookie headers, as a browser would send them back. */
export function cookiesOf (headers: Record<string, unknown>): string {
  const set = headers['set-cookie']
  const list = Array.isArray(set) ? set as string[] : typeof set === 'string' ? [set] : []
  return list.map(c => c.split(';')[0]).join('; ')
}

/** Starts an onboarding as a browser would: the state of the authorize redirect, and the browser's cookie. */
export async function connect (b: Built, connectQuery = '', cookie?: string): Promise<{ state: string, cookie: string, location: URL }> {
  const res = await b.app.inject({ method: 'GET', url: `/oauth/connect${connectQuery}`, headers: cookie === undefined ? {} : { cookie } })
  const location = new URL(String(res.headers.location))
  return { state: location.searchParams.get('state') ?? '', cookie: cookiesOf(res.headers) || (cookie ?? ''), location }
}

/** The callback as CyberSource's redirect brings the browser to it. */
export async function callback (b: Built, params: { code?: string, state?: string }, cookie?: string): Promise<{ statusCode: number, body: string, headers: Record<string, unknown> }> {
  const query = new URLSearchParams(Object.entries(params).filter((e): e is [string, string] => e[1] !== undefined)).toString()
  const res = await b.app.inject({ method: 'GET', url: `/oauth/callback${query === '' ? '' : `?${query}`}`, headers: cookie === undefined || cookie === '' ? {} : { cookie } })
  return { statusCode: res.statusCode, body: res.body, headers: res.headers }
}

/** Runs the onboarding as the browser would (connect → simulator Allow → callback); returns the callback response. */
export async function onboard (b: Built, merchantId: string, connectQuery = ''): Promise<{ statusCode: number, body: string, headers: Record<string, unknown> }> {
  const started = await connect(b, connectQuery)
  return await callback(b, { code: b.sim.control.issueCode(merchantId), state: started.state }, started.cookie)
}

/** Polls `predicate` every 25 ms until it holds (true) or `timeoutMs` passed (false). */
export async function until (predicate: () => Promise<boolean> | boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await predicate()) return true
    if (Date.now() > deadline) return false
    await sleep(25)
  }
}

/** Records every access and refresh token the simulator hands out (for leak checks). */
export function recordIssuedTokens (sim: Simulator): Set<string> {
  const issued = new Set<string>()
  sim.app.addHook('onSend', async (request, _reply, payload) => {
    if (request.url.startsWith(TOKEN_PATH) && typeof payload === 'string') {
      try {
        const body = JSON.parse(payload) as Record<string, unknown>
        for (const k of ['access_token', 'refresh_token']) if (typeof body[k] === 'string') issued.add(body[k])
      } catch {}
    }
    return payload
  })
  return issued
}
