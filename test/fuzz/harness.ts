// The harness of the fuzz suites: one app on a private Redis and the simulator, with merchants
// onboarded (setup); send() puts a generated request through app.inject and verify() checks what
// every answer of the service must hold (status, shape, correlation id, pages, redirects) and
// every log line the request caused; property() runs a fast-check property and reports its shrunk
// counterexample; checkEndState() checks Redis and the app after a run.
import { hostname } from 'node:os'
import fc from 'fast-check'
import type { InjectOptions } from 'fastify'
import type { Redis } from 'ioredis'
import { ID_PATTERN } from '../../src/config.js'
import { FAILURES, errorPage, failurePage, successPage, type Branding, type PageReason } from '../../src/pages.js'
import { buildSimulator } from '../../src/simulator/app.js'
import { CLIENT_ID, build, onboard, recordIssuedTokens, secrets, type Built } from '../helper.js'
import { scanKeys } from '../helpers/redis.js'
import type { Credentials } from './arbitraries.js'

export { ID_PATTERN }
export const CORRELATION_ID = /^[A-Za-z0-9._-]{8,64}$/
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

interface Tap {
  fail: (message: string) => void
  pass: (message: string) => void
  teardown: (fn: () => unknown) => void
}

/** The seed CI replays (see property). */
const CI_SEED = 20261204

/** Codes of the JSON error shape (docs/api.md), by status. */
const CODES_BY_STATUS: Record<number, string[]> = {
  400: ['invalid_request'],
  401: ['unauthorized'],
  404: ['merchant_not_found', 'not_found'],
  409: ['reauthorization_required'],
  408: ['invalid_request'],
  413: ['invalid_request'],
  414: ['invalid_request'],
  415: ['invalid_request'],
  417: ['invalid_request'],
  431: ['invalid_request'],
  502: ['upstream_unavailable', 'storage_unavailable'],
  503: ['upstream_unavailable', 'storage_unavailable']
}

/** The harness's service has no partner name or portal link. */
const BRANDING: Branding = {}

/** Every text an HTML answer may be, given its status and correlation id. */
function expectedPages (status: number, id: string): string[] {
  const pages = (Object.keys(FAILURES) as PageReason[])
    .filter(r => FAILURES[r].status === status || (r === 'invalid_request' && status >= 400 && status < 500))
    .map(r => failurePage(r, id, BRANDING))
  return pages
}

/** The fixed text of every page, for telling reflected input from the service's own markup. */
const PAGE_TEMPLATES = [
  ...(Object.keys(FAILURES) as PageReason[]).map(r => failurePage(r, '', BRANDING)),
  errorPage('', BRANDING),
  successPage('', '', BRANDING)
].join('\n')

/**
 * The path of `url` split into decoded segments, as the router sees them (undefined:
 * undecodable). An absolute-form request target is routed by its path.
 */
function decodedSegments (url: string): string[] | undefined {
  const path = url.replace(/^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#]*/, '').replace(/[?#].*$/s, '')
  try {
    return path.split('/').map(decodeURIComponent)
  } catch {
    return undefined
  }
}

/** Whether `url` reaches /oauth/connect or /oauth/callback. */
export function browserRoute (url: string): 'connect' | 'callback' | undefined {
  const s = decodedSegments(url)
  if (s?.length !== 3 || s[0] !== '' || s[1] !== 'oauth') return undefined
  return s[2] === 'connect' || s[2] === 'callback' ? s[2] : undefined
}

/** Printable ASCII only (the TAP stream breaks on raw U+2028), and bounded. */
export function printable (s: string, max = 1500): string {
  const safe = s.replace(/[^\x20-\x7e]/gu, c => [...c].map(u => `\\u{${(u.codePointAt(0) ?? 0).toString(16)}}`).join(''))
  return safe.length > max ? `${safe.slice(0, max)}…(${safe.length} chars)` : safe
}

export interface Request {
  method: NonNullable<InjectOptions['method']>
  url: string
  headers: Record<string, string>
  payload?: string
  /** Generated text that must not reach a log line: invalid ids, presented credentials, codes, states. */
  unloggable: string[]
  /** Generated text (checked against HTML answers when it holds markup characters). */
  generated: string[]
  /** The caller's x-correlation-id, as sent. */
  correlationId?: string
}

export interface Answer {
  status: number
  headers: Record<string, string | string[] | number | undefined>
  body: string
  id: string
  json: unknown
}

export class PropertyFailure extends Error {
  override name = 'PropertyFailure'
}

/** The error code of a JSON error answer. */
export const errorCode = (a: Answer): string | undefined => (a.json as { error?: { code?: string } } | undefined)?.error?.code

export function must (ok: boolean, message: string): asserts ok {
  if (!ok) throw new PropertyFailure(message)
}

/** Every string in a parsed log line, keys included, with the key it is under. */
function * strings (value: unknown, key = ''): Generator<[string, string]> {
  if (typeof value === 'string') yield [key, value]
  else if (Array.isArray(value)) for (const v of value) yield * strings(v, key)
  else if (typeof value === 'object' && value !== null) {
    for (const [k, v] of Object.entries(value)) {
      yield [k, k]
      yield * strings(v, k)
    }
  }
}

export interface HarnessOptions {
  /** Every token the simulator issued (recordIssuedTokens). */
  tokens: Set<string>
  /** Log text of ordinary requests: generated text found in it is the service's own words. */
  vocabulary: string[]
}

/**
 * Sends generated requests and checks the properties every answer has (see check()). Records
 * the onboarding states the answers hand out, and unhandled rejections while it runs.
 */
export class Harness {
  /** States the answers handed out (redirects of /oauth/connect, onboarding links). */
  readonly issuedStates = new Set<string>()
  /** States the test made itself (the store's create()), consumed or not. */
  readonly ownStates = new Set<string>()
  /**
   * Starts the HTTP parser refused after it had dispatched them (a broken body after the
   * headers): the route may still make its state, which no answer hands out.
   */
  abandonedStarts = 0
  readonly rejections: unknown[] = []
  private pending: string[] = []
  private readonly vocabulary: string
  private readonly forbidden: string[]

  constructor (t: Tap, private readonly b: Built, readonly opts: HarnessOptions) {
    const onRejection = (reason: unknown): void => { this.rejections.push(reason) }
    process.on('unhandledRejection', onRejection)
    t.teardown(() => process.off('unhandledRejection', onRejection))
    // Pino writes a line per call to its stream: tapping the capture's write gives each request
    // its own lines without re-reading the whole capture.
    const stream = b.logs.stream
    const write = stream.write.bind(stream) as (...args: unknown[]) => boolean
    stream.write = ((...args: unknown[]) => {
      this.pending.push(String(args[0]))
      return write(...args)
    }) as typeof stream.write
    this.vocabulary = [hostname(), ...opts.vocabulary].join('\n')
    const s = b.secrets
    this.forbidden = [s.apiSecret, s.otherApiSecret, s.clientSecret, s.encryptionKey]
  }

  get credentials (): Credentials { return { payments: this.b.secrets.apiSecret, reports: this.b.secrets.otherApiSecret } }

  /** Log lines written since the last call. */
  drainLogs (): string[] {
    const lines = this.pending.join('').split('\n').filter(l => l !== '')
    this.pending = []
    return lines
  }

  /** Sends `r` and checks the answer and the log lines it caused; throws PropertyFailure. */
  async send (r: Request): Promise<Answer> {
    this.drainLogs()
    const res = await this.b.app.inject({ method: r.method, url: r.url, headers: r.headers, payload: r.payload })
    return this.verify(r, { status: res.statusCode, headers: res.headers, body: res.body, id: String(res.headers['x-correlation-id']), json: undefined })
  }

  /** Checks an answer to `r` (sent after drainLogs()) and the log lines written since. */
  verify (r: Request, a: Answer): Answer {
    this.check(r, a)
    this.checkLogs(r, a, this.drainLogs())
    must(this.rejections.length === 0, `an unhandled rejection: ${printable(String(this.rejections[0]))}`)
    return a
  }

  /** Notes the state of an authorize URL an answer handed out, before anything else is checked. */
  private noteState (a: Answer): void {
    let url = typeof a.headers.location === 'string' ? a.headers.location : undefined
    if (url === undefined && a.status === 201) url = /"url":"([^"]*)"/.exec(a.body)?.[1]
    const state = url === undefined ? null : URL.parse(url)?.searchParams.get('state')
    if (typeof state === 'string') this.issuedStates.add(state)
  }

  private check (r: Request, a: Answer): void {
    this.noteState(a)
    const where = Harness.where(r, a)
    const type = String(a.headers['content-type'] ?? '')
    const location = a.headers.location
    // The browser routes serve GET only: a HEAD has no route there (a link checker must not
    // spend a state or a code).
    const browser = browserRoute(r.url) !== undefined && r.method === 'GET'
    const html = type.startsWith('text/html')
    must(a.headers['x-correlation-id'] !== undefined && CORRELATION_ID.test(a.id), `${where}: correlation id ${printable(a.id)}`)
    if (r.correlationId !== undefined && CORRELATION_ID.test(r.correlationId)) {
      // Browser routes print their id on the page: a client must not choose it. Any other answer
      // (a 404 under /oauth/ included) keeps the caller's.
      const browserish = browser || html || location !== undefined
      // An answer made before routing (an unsupported Expect header) has an id of its own.
      if (a.status === 417) must(a.id !== r.correlationId, `${where}: an answer before routing took the client's x-correlation-id`)
      else if (browserish) must(a.id !== r.correlationId, `${where}: a browser route answered with the client's x-correlation-id`)
      else must(a.id === r.correlationId, `${where}: the caller's well-formed x-correlation-id was not kept`)
    }
    must(a.headers['x-content-type-options'] === 'nosniff', `${where}: no nosniff`)
    if (r.method === 'HEAD') must(a.body === '', `${where}: HEAD with a body`)
    if (type.startsWith('application/json') && a.body !== '') {
      try {
        a.json = JSON.parse(a.body)
      } catch {
        must(false, `${where}: a JSON answer that does not parse`)
      }
    }

    if (location !== undefined) {
      must(browser && a.status === 302, `${where}: a redirect outside the browser routes`)
      this.checkAuthorizeUrl(where, String(location))
      return
    }
    if (html) {
      must(browser || r.url.startsWith('/oauth/'), `${where}: HTML outside the browser routes`)
      must(a.status < 500 || a.status === 502 || a.status === 503, `${where}: a 5xx page`)
      if (r.method === 'HEAD') return
      must(expectedPages(a.status, a.id).includes(a.body), `${where}: an HTML answer that is not one of the service's pages`)
      for (const g of r.generated) {
        if (/[<>"']/.test(g) && a.body.includes(g) && !PAGE_TEMPLATES.includes(g)) must(false, `${where}: generated markup reflected unescaped: ${printable(g, 200)}`)
      }
      return
    }
    // A method the browser routes do not serve has no route there: the JSON errors of any path;
    // so are the answers made before routing (an unsupported Expect header).
    must(!browser || a.status === 417, `${where}: a browser route answered neither a page nor a redirect (${printable(type)})`)
    if (decodedSegments(r.url)?.join('/') === '/health/ready' && (r.method === 'GET' || r.method === 'HEAD') && a.status !== 414 && a.status !== 417) {
      must(a.status === 200 || a.status === 503, `${where}: readiness status`)
      if (r.method === 'GET') must((a.json as { status?: unknown }).status === (a.status === 200 ? 'ready' : 'unavailable'), `${where}: readiness body`)
      return
    }
    if (a.status < 300) {
      must(a.status !== 204 || a.body === '', `${where}: a 204 with a body`)
      return
    }
    must(a.status < 500 || a.status === 502 || a.status === 503, `${where}: status ${a.status}`)
    must(type.startsWith('application/json'), `${where}: an error that is not JSON (${printable(type)})`)
    if (r.method === 'HEAD') return
    const body = a.json
    const e = (body as { error?: Record<string, unknown> }).error
    must(typeof body === 'object' && body !== null && Object.keys(body).length === 1 && typeof e === 'object' && e !== null, `${where}: not the error shape`)
    must(Object.keys(e).sort().join(',') === 'code,correlation_id,message', `${where}: error fields ${printable(Object.keys(e).join(','))}`)
    must(typeof e.code === 'string' && typeof e.message === 'string' && e.correlation_id === a.id, `${where}: error field types or correlation id`)
    must(CODES_BY_STATUS[a.status]?.includes(e.code) === true, `${where}: code ${printable(String(e.code))} with status ${a.status}`)
    if (a.status === 401) must(a.headers['www-authenticate'] === 'Bearer', `${where}: a 401 without WWW-Authenticate: Bearer`)
  }

  /** Checks an authorize URL an answer handed out and notes its state. */
  checkAuthorizeUrl (where: string, location: string): void {
    const url = new URL(location)
    const authorize = new URL(this.b.config.cybs.authorizeUrl)
    must(url.origin === authorize.origin && url.pathname === authorize.pathname, `${where}: redirect to ${printable(url.origin + url.pathname)}`)
    must([...url.searchParams.keys()].sort().join(',') === 'client_id,redirect_url,state,sub', `${where}: redirect parameters ${printable(url.search, 300)}`)
    const state = url.searchParams.get('state') ?? ''
    must(/^[A-Za-z0-9_-]{43}$/.test(state), `${where}: redirect state shape`)
    this.issuedStates.add(state)
  }

  private checkLogs (r: Request, a: Answer, lines: string[]): void {
    const where = Harness.where(r, a)
    const checkable = r.unloggable.filter(s => s.length >= 6 && !this.vocabulary.includes(s))
    const secrets = [...this.forbidden, ...this.opts.tokens, ...this.issuedStates]
    for (const line of lines) {
      for (const s of secrets) must(!line.includes(s), `${where}: a secret, token or state in a log line`)
      let parsed: unknown
      try {
        parsed = JSON.parse(line)
      } catch {
        must(false, `${where}: a log line that is not JSON`)
      }
      for (const [key, value] of strings(parsed)) {
        if (key === 'merchant_id' || key === 'authorized_merchant_id') must(ID_PATTERN.test(value), `${where}: an invalid merchant id logged: ${printable(value, 200)}`)
        // Request ids are logged by design (a caller's only if well-formed); random UUIDs can
        // hold any short run of hex digits.
        if (key === 'reqId' || UUID.test(value)) continue
        for (const s of checkable) must(!value.includes(s), `${where}: generated text logged (under ${printable(key)}): ${printable(s, 200)}`)
      }
    }
  }

  /** `METHOD url -> status`, printable, for messages. */
  static where (r: Request, a: Answer): string { return `${r.method} ${printable(r.url, 300)} -> ${a.status}` }

  /** The answer of /health/live (the app still serves). */
  async live (): Promise<number> {
    return (await this.b.app.inject({ url: '/health/live' })).statusCode
  }
}

/**
 * Runs a property with fast-check and reports it on `t`: the shrunk counterexample (printable,
 * so the TAP stream survives U+2028) with the seed and path to replay it.
 */
export async function property<T> (t: Tap, name: string, arb: fc.Arbitrary<T>, run: (v: T) => Promise<void>, opts: { numRuns: number, examples?: T[] }): Promise<void> {
  // Fixed cases first (counterexamples found before), each reported on its own.
  for (const example of opts.examples ?? []) {
    try {
      await run(example)
      t.pass(`${name}, fixed case ${printable(fc.stringify(example), 300)}`)
    } catch (err) {
      t.fail(`${name}, fixed case: ${printable(err instanceof Error ? err.message : String(err), 800)}\n  case: ${printable(fc.stringify(example))}`)
    }
  }
  // A fresh seed per run explores; CI replays a fixed one (FUZZ_SEED overrides both), so that a
  // landing is decided by the code, not by which inputs a run happened to draw.
  const given = process.env.FUZZ_SEED ?? (process.env.CI === 'true' ? String(CI_SEED) : undefined)
  const seed = given === undefined ? undefined : Number(given)
  const details = await fc.check(fc.asyncProperty(arb, run), { numRuns: opts.numRuns, seed })
  if (details.failed) {
    const err = details.errorInstance
    const message = err instanceof PropertyFailure ? err.message : err instanceof Error ? `${err.name}: ${err.message}` : String(err)
    t.fail(`${name}: ${printable(message, 800)}\n  counterexample: ${printable(fc.stringify(details.counterexample))}\n  seed ${details.seed}, path "${details.counterexamplePath}"`)
  } else {
    t.pass(`${name}: ${details.numRuns} cases`)
  }
}

/** The merchants every suite onboards before fuzzing. */
export const REAL = ['m_fuzz_1', 'm_fuzz_2', 'm_fuzz_3']

const ROUTES = [
  '/internal/v1/merchants/:merchantId/access-token', '/internal/v1/merchants/:merchantId',
  '/internal/v1/merchants/', '/internal/v1/merchants/:merchantId/refresh', '/internal/v1/onboarding-links/',
  '/oauth/connect', '/oauth/callback', '/health/live', '/health/ready', '/metrics/', '/docs/json'
]

export interface Fuzz {
  b: Built
  h: Harness
  redis: Redis
  /** Every merchant record (HGETALL) as it was before fuzzing. */
  records: Map<string, Record<string, string>>
}

/** Every key of the merchants, as stored: a hash field for field, a string as hex. */
export async function merchantRecords (f: { b: Built, redis: Redis }): Promise<Map<string, Record<string, string>>> {
  const keys = await scanKeys(f.redis, `${f.b.config.redisKeyPrefix}merchant:*`)
  const out = new Map<string, Record<string, string>>()
  for (const k of keys.sort()) {
    out.set(k, await f.redis.type(k) === 'hash' ? await f.redis.hgetall(k) : { value: (await f.redis.getBuffer(k))?.toString('hex') ?? '' })
  }
  return out
}

/**
 * The app on a private Redis and a simulator that records every token it issues, with REAL
 * onboarded; ordinary calls first, whose log text is the service's own vocabulary.
 */
export async function setup (t: Tap, env: Record<string, string> = {}): Promise<Fuzz> {
  const s = secrets()
  const sim = buildSimulator({ clientId: CLIENT_ID, clientSecret: s.clientSecret })
  const tokens = recordIssuedTokens(sim)
  await sim.app.listen({ host: '127.0.0.1', port: 0 })
  t.teardown(async () => await sim.app.close())
  const { port } = sim.app.server.address() as { port: number }
  const b = await build(t, { secrets: s, simulator: { ...sim, url: `http://127.0.0.1:${port}` }, env })
  for (const id of REAL) {
    const r = await onboard(b, id)
    if (r.statusCode !== 200) throw new Error(`onboarding ${id} answered ${r.statusCode}`)
  }
  const auth = { authorization: `Bearer ${s.apiSecret}` }
  for (const [method, url, headers] of [
    ['GET', `/internal/v1/merchants/${REAL[0]}/access-token`, auth], ['HEAD', `/internal/v1/merchants/${REAL[0]}/access-token`, auth],
    ['GET', `/internal/v1/merchants/${REAL[0]}`, auth], ['GET', '/internal/v1/merchants?limit=1', auth],
    ['POST', '/internal/v1/merchants/m_warm/refresh', auth], ['DELETE', '/internal/v1/merchants/m_warm', auth],
    ['GET', '/internal/v1/merchants/bad.id', auth], ['POST', '/internal/v1/onboarding-links', {}], ['GET', '/docs/json', auth],
    ['GET', '/oauth/callback', {}], ['GET', '/oauth/callback?state=x', {}], ['GET', '/health/ready', {}]
  ] as const) {
    await b.app.inject({ method, url, headers })
  }
  const vocabulary = [...ROUTES, ...REAL, 'payments', 'reports']
  for (const line of b.logs.lines()) for (const [, v] of strings(line)) vocabulary.push(v)
  const redis = b.app.redis as unknown as Redis
  return { b, h: new Harness(t, b, { tokens, vocabulary }), redis, records: await merchantRecords({ b, redis }) }
}

interface Asserts {
  same: (a: unknown, b: unknown, message: string) => void
  equal: (a: unknown, b: unknown, message: string) => void
  ok: (a: unknown, message: string) => void
}

/**
 * After a run: the merchant records are those onboarded, field for field; the only states are
 * those the answers handed out; no other key was left; the app still answers; no rejection.
 */
export async function checkEndState (t: Asserts, f: Fuzz): Promise<void> {
  const after = await merchantRecords(f)
  t.same([...after.keys()], [...f.records.keys()], 'the merchant keys are exactly the onboarded ones')
  for (const [k, before] of f.records) t.same(after.get(k), before, `${k} is unchanged (version included)`)
  const prefix = f.b.config.redisKeyPrefix
  const states = new Set(await scanKeys(f.redis, `${prefix}state:*`))
  const key = (s: string): string => f.b.app.redisKeys.state(s)
  const issued = new Set([...f.h.issuedStates].map(key))
  const own = new Set([...f.h.ownStates].map(key))
  t.same([...issued].filter(k => !states.has(k)), [], `the ${issued.size} states the answers handed out are all there`)
  const stray = [...states].filter(k => !issued.has(k) && !own.has(k))
  t.ok(stray.length <= f.h.abandonedStarts, `no other state was made (${stray.length} by ${f.h.abandonedStarts} starts the parser refused after dispatch)`)
  // Beside merchants and states: their counts, rate-limit and state-cap counters, the outcomes of
  // used states, onboarding links (made by authorized POSTs), lifecycle events, the keep-alive schedule.
  const expected = ['merchant:', 'merchant-counts', 'state:', 'state-outcome:', 'rate:', 'state-quota:', 'link:', '{events}:', '{keepalive}:'].map(p => `${prefix}${p}`)
  const others = (await scanKeys(f.redis, '*')).filter(k => !expected.some(p => k.startsWith(p)))
  t.same(others, [], 'no other key left behind')
  // Metric labels are fixed words: thousands of hostile requests add no series.
  const metrics = await f.b.app.inject({ url: '/metrics' })
  const series = new Map<string, number>()
  for (const line of metrics.body.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const name = line.split(/[{ ]/)[0]
    series.set(name, (series.get(name) ?? 0) + 1)
  }
  t.same([...series].filter(([, n]) => n > 100), [], 'no metric has more than 100 series')
  t.equal(await f.h.live(), 200, '/health/live still answers')
  t.equal(f.h.rejections.length, 0, 'no unhandled rejection')
}
