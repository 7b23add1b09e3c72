// The servers under test and what they need: a private redis-server, the simulator in this
// process, the broker (`node dist/src/server.js`, production logging) with one onboarded merchant,
// the baselines of bench/baselines.ts and the builds of BENCH_COMPARE; after the run, the check
// that every lookup is in the brokers' audit trails.
import { randomBytes } from 'node:crypto'
import { createReadStream, rmSync } from 'node:fs'
import { request as httpRequest } from 'node:http'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { startRedis, type Child, type Children } from './children.js'
import type { Target } from './load.js'
import { BenchError, OUT, ROOT, type Settings } from './settings.js'
import { buildSimulator } from '../src/simulator/app.js'
import { freePort } from '../src/net-utils.js'

const MERCHANT = 'bench_merchant'
const LOOKUP_ROUTE = '/internal/v1/merchants/:merchantId/access-token'
const LOOKUP_PATH = LOOKUP_ROUTE.replace(':merchantId', MERCHANT)

export interface Answer { status: number, headers: Record<string, string | string[] | undefined>, headerBytes: number, body: string }

export interface TestBed {
  targets: Target[]
  authorization: string
  /** Each target's answer to one lookup, checked before the load. */
  answers: Map<string, Answer>
  bodyBytes: number
  tokenBytes: number
}

/** Starts everything; `onClose` is given what to close once the servers under test stopped. */
export async function setUp (settings: Settings, children: Children, onClose: (close: () => Promise<unknown>) => void): Promise<TestBed> {
  const ports = await Promise.all(Array.from({ length: 5 + settings.compare.length }, async () => await freePort()))
  if (new Set(ports).size !== ports.length) throw new BenchError('could not get distinct free ports; run again')
  const [simPort, brokerPort, staticPort, helloPort, naivePort, ...comparePorts] = ports
  const brokerBase = `http://127.0.0.1:${brokerPort}`

  // Started before this process is pinned, whose core the children would inherit.
  const redis = await startRedis(children)
  onClose(async () => { await redis.close() })
  children.pinClient()

  const clientId = 'bench-partner'
  const clientSecret = `cs-${randomBytes(24).toString('base64url')}`
  const sim = buildSimulator({
    clientId,
    clientSecret,
    redirectUrl: `${brokerBase}/oauth/callback`,
    tokenPadBytes: settings.padBytes,
    // No refresh falls inside the run (one is due after about 2/3 of the lifetime).
    accessTokenTtlSeconds: 3600,
    adminApi: false
  })
  onClose(async () => await sim.app.close())
  await sim.app.listen({ host: '127.0.0.1', port: simPort })

  const apiSecret = randomBytes(32).toString('base64url')
  const authorization = `Bearer ${apiSecret}`
  const secrets = {
    TOKEN_ENCRYPTION_KEYS: `bench:${randomBytes(32).toString('base64')}`,
    INTERNAL_API_KEYS: `bench:${apiSecret}`
  }
  const brokerEnv = (port: number): NodeJS.ProcessEnv => ({
    PATH: process.env.PATH,
    NODE_ENV: 'production',
    LOG_LEVEL: 'info',
    HOST: '127.0.0.1',
    PORT: String(port),
    PUBLIC_BASE_URL: `http://127.0.0.1:${port}`,
    REDIS_URL: redis.url,
    CYBS_ENVIRONMENT: 'simulator',
    CYBS_AUTHORIZE_URL: `http://127.0.0.1:${simPort}/ebc2/oauth/authorize`,
    CYBS_TOKEN_URL: `http://127.0.0.1:${simPort}/oauth2/v3/token`,
    CYBS_CLIENT_ID: clientId,
    CYBS_CLIENT_SECRET: clientSecret,
    ...secrets
  })
  const node = process.execPath
  const brokerLog = join(OUT, 'broker.log')
  /** Starts a broker build (this one, or one of BENCH_COMPARE) on its port, logging to its file. */
  const brokerStarter = (name: string, script: string, port: number, logFile: string) => async (): Promise<Child> =>
    await children.start(name, node, [...settings.brokerNodeArgs, script], port, brokerEnv(port), logFile)
  const startBroker = brokerStarter('broker', join(ROOT, 'dist', 'src', 'server.js'), brokerPort, brokerLog)
  const broker = await startBroker()

  // Onboard one merchant the way a browser does: connect → (consent) → callback.
  const connect = await get(`${brokerBase}/oauth/connect`)
  const location = connect.headers.location
  if (connect.status !== 302 || typeof location !== 'string') throw new BenchError(`GET /oauth/connect answered ${connect.status}`)
  const state = new URL(location).searchParams.get('state')
  if (state === null) throw new BenchError('the authorize URL carries no state')
  const code = sim.control.issueCode(MERCHANT)
  // The browser brings back the cookie that binds the state to it.
  const cookie = [connect.headers['set-cookie'] ?? []].flat().map(c => String(c).split(';')[0]).join('; ')
  const callback = await get(`${brokerBase}/oauth/callback?code=${encodeURIComponent(code)}&state=${encodeURIComponent(state)}`, { cookie })
  if (callback.status !== 200) throw new BenchError(`GET /oauth/callback answered ${callback.status}`)

  const lookup = await get(`${brokerBase}${LOOKUP_PATH}`, { authorization })
  const token = lookup.status === 200 ? (JSON.parse(lookup.body) as { access_token?: unknown }).access_token : undefined
  if (typeof token !== 'string' || token.length < 100) throw new BenchError(`the lookup answered ${lookup.status} without a token`)

  // The static body is the real lookup response: the same bytes.
  const baselineEnv = { PATH: process.env.PATH, NODE_ENV: 'production' }
  const baselines = join(ROOT, 'dist', 'bench', 'baselines.js')
  const baseline = (kind: string, port: number, env: NodeJS.ProcessEnv) => async (): Promise<Child> =>
    await children.start(kind, node, [baselines, kind, String(port)], port, { ...baselineEnv, ...env })
  const url = (port: number): string => `http://127.0.0.1:${port}${LOOKUP_PATH}`
  const target = async (t: Omit<Target, 'child' | 'served'>): Promise<Target> => ({ ...t, child: await t.start(), served: 0 })

  const targets: Target[] = [
    { name: 'broker', label: 'broker lookup: cached token, production logging', url: url(brokerPort), child: broker, start: startBroker, logFile: brokerLog, served: 1 },
    await target({ name: 'static', label: 'baseline A: bare Fastify, static body of the same size', url: url(staticPort), start: baseline('static', staticPort, { BENCH_STATIC_BODY: lookup.body }) }),
    await target({ name: 'hello', label: 'baseline B: Fastify hello world', url: url(helloPort), start: baseline('hello', helloPort, {}) })
  ]
  if (settings.naive) {
    targets.push(await target({ name: 'naive', label: 'naive path: Redis HGETALL + AES-GCM decryption + 2 log lines per call', url: url(naivePort), start: baseline('naive', naivePort, { REDIS_URL: redis.url, ...secrets }) }))
  }
  for (const [i, build] of settings.compare.entries()) {
    const port = comparePorts[i]
    const logFile = join(OUT, `${build.name}.log`)
    targets.push(await target({ name: build.name, label: `broker built from ${build.script}`, url: url(port), start: brokerStarter(build.name, build.script, port, logFile), logFile }))
  }

  const answers = new Map<string, Answer>()
  for (const t of targets) {
    const a = await get(t.url, { authorization })
    if (a.status !== 200) throw new BenchError(`${t.name}: answered ${a.status}`)
    t.served++
    answers.set(t.name, a)
  }
  if (answers.get('static')?.body !== lookup.body) throw new BenchError('the static route does not answer the lookup response')

  return { targets, authorization, answers, bodyBytes: Buffer.byteLength(lookup.body), tokenBytes: Buffer.byteLength(token) }
}

/**
 * Stops every broker and checks its audit trail: a line per call, or summaries (which stopping
 * writes). A request still in flight when a load ended was answered and audited but not counted
 * by autocannon, hence "at least".
 */
export async function checkAudits (settings: Settings, children: Children, targets: Target[]): Promise<string[]> {
  const audit: string[] = []
  for (const t of targets) {
    if (t.logFile === undefined) continue
    await children.stop(t.child)
    const { lookups, lines } = await auditedLookups(t.logFile)
    if (!settings.keepLogs) rmSync(t.logFile, { force: true })
    if (lookups < t.served) throw new BenchError(`${t.name} audited ${lookups} lookups of ${t.served}`)
    audit.push(`${t.name} ${lookups} lookups of ${t.served} in ${lines} lines`)
  }
  return audit
}

async function auditedLookups (file: string): Promise<{ lookups: number, lines: number }> {
  let lookups = 0
  let lines = 0
  for await (const line of createInterface({ input: createReadStream(file), crlfDelay: Infinity })) {
    if (!line.includes('"msg":"internal api')) continue
    const l = JSON.parse(line) as { msg?: string, route?: string, count?: number }
    if (l.route !== LOOKUP_ROUTE) continue
    if (l.msg === 'internal api call') lookups++
    else if (l.msg === 'internal api lookups') lookups += l.count ?? 0
    else continue
    lines++
  }
  return { lookups, lines }
}

async function get (url: string, headers: Record<string, string> = {}): Promise<Answer> {
  return await new Promise((resolve, reject) => {
    const req = httpRequest(url, { headers, timeout: 10_000 }, res => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        // Size of the header block as sent: "name: value\r\n" per header.
        let headerBytes = 0
        for (let i = 0; i < res.rawHeaders.length; i += 2) headerBytes += res.rawHeaders[i].length + res.rawHeaders[i + 1].length + 4
        resolve({ status: res.statusCode ?? 0, headers: res.headers, headerBytes, body: Buffer.concat(chunks).toString('utf8') })
      })
      res.on('error', reject)
    })
    req.on('timeout', () => req.destroy(new BenchError(`GET ${url}: timed out`)))
    req.on('error', reject)
    req.end()
  })
}
