// GET /metrics: a well-formed Prometheus text exposition (format 0.0.4), with
// the default process metrics and the service's own, whose values move as flows run, and whose
// labels never carry a merchant id, a token or a secret. Values are read from the app's prom-client
// registry at each scrape; the scraped text is checked line by line.
import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import { build, onboard, type Built } from '../helper.js'
import { createKeyRing } from '../../src/key-ring.js'
import { createRedisKeys } from '../../src/redis-keys.js'
import { createTokenStore } from '../../src/token-store.js'

// ---- helpers ------------------------------------------------------------------------------

// One line of the text format: HELP, TYPE, or a sample `name{label="value",…} value`; prom-client
// writes `Nan` (e.g. the event-loop lag mean before the first sample).
const NAME = String.raw`[a-zA-Z_:][\w:]*`
const LABEL = String.raw`[a-zA-Z_]\w*="(?:[^"\\\n]|\\[\\"n])*"`
const LINE = new RegExp(String.raw`^(?:# HELP ${NAME} .*|# TYPE ${NAME} (?:counter|gauge|histogram|summary|untyped)|` +
  String.raw`${NAME}(?:\{${LABEL}(?:,${LABEL})*\})? [-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|Inf|NaN|Nan))$`)

interface Sample { name: string, family: string, labels: Record<string, string>, value: number }
interface Scrape { text: string, samples: Sample[] }

/** GET /metrics, its lines checked against the format, and the registry's values as of that scrape. */
async function scrape (t: Test, b: Built): Promise<Scrape> {
  const res = await b.app.inject({ method: 'GET', url: '/metrics' })
  t.equal(res.statusCode, 200, 'GET /metrics')
  t.match(String(res.headers['content-type']), /^text\/plain; version=0\.0\.4; charset=utf-8$/)
  t.match(res.body, /\n$/, 'the exposition ends with a newline')
  t.same(res.body.split('\n').filter(line => line !== '' && !LINE.test(line)), [], 'every line is a HELP, a TYPE or a sample')
  const metrics = await b.app.metrics.registry.getMetricsAsJSON()
  const samples = metrics.flatMap(m => m.values.map(v => ({
    name: (v as { metricName?: string }).metricName ?? m.name, // histograms: _bucket, _sum, _count
    family: m.name,
    labels: Object.fromEntries(Object.entries(v.labels).map(([k, l]) => [k, String(l)])),
    value: v.value
  })))
  return { text: res.body, samples }
}

/** A `# TYPE` line, and a `# HELP` line with a text. */
const typeLine = (name: string, type: string): RegExp => new RegExp(`^# TYPE ${name} ${type}$`, 'm')
const helpLine = (name: string): RegExp => new RegExp(`^# HELP ${name} \\S`, 'm')

/** The value of one series; 0 when a labelled counter or histogram has not been touched yet. */
function value (e: Scrape, name: string, labels: Record<string, string> = {}): number {
  const found = e.samples.filter(s => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v) &&
    Object.keys(s.labels).length === Object.keys(labels).length)
  if (found.length > 1) throw new Error(`${name}: ${found.length} series match`)
  return found[0]?.value ?? 0
}

/** Sum over every series of a name. */
const total = (e: Scrape, name: string): number => e.samples.filter(s => s.name === name).reduce((a, s) => a + s.value, 0)

async function movableClock (t: Test): Promise<{ b: Built, advance: (ms: number) => void }> {
  let offset = 0
  const now = (): number => Date.now() + offset
  const b = await build(t, { now, simulatorOptions: { now } })
  return { b, advance: (ms) => { offset += ms } }
}

const SERVICE_FAMILIES: Record<string, string> = {
  cybs_token_lookups_total: 'counter',
  cybs_token_refreshes_total: 'counter',
  cybs_token_refresh_duration_seconds: 'histogram',
  cybs_refresh_lock_waits_total: 'counter',
  cybs_refresh_lock_wait_seconds: 'histogram',
  cybs_oauth_callbacks_total: 'counter',
  cybs_upstream_request_duration_seconds: 'histogram',
  cybs_merchants: 'gauge'
}

// ---- the service's exposition ---------------------------------------------------------------

t.test('GET /metrics: a valid exposition with the process metrics and the service metrics', async t => {
  const b = await build(t)
  const e = await scrape(t, b)
  for (const [name, type] of Object.entries({
    process_cpu_user_seconds_total: 'counter',
    process_resident_memory_bytes: 'gauge',
    process_start_time_seconds: 'gauge',
    nodejs_heap_size_used_bytes: 'gauge',
    nodejs_eventloop_lag_seconds: 'gauge',
    nodejs_version_info: 'gauge'
  })) {
    t.match(e.text, typeLine(name, type), `default metric ${name} (${type})`)
    t.match(e.text, new RegExp(`^${name}[{ ]`, 'm'), `${name} has a sample`)
  }
  for (const [name, type] of Object.entries(SERVICE_FAMILIES)) {
    t.match(e.text, typeLine(name, type), `service metric ${name} (${type})`)
    t.match(e.text, helpLine(name), `${name} has a HELP text`)
  }
  t.equal(value(e, 'cybs_merchants', { status: 'connected' }), 0, 'no merchant stored yet')
  t.equal(value(e, 'cybs_merchants', { status: 'reauthorization_required' }), 0)
  for (const s of e.samples.filter(s => s.family.startsWith('cybs_'))) t.notOk(Number.isNaN(s.value), `${s.name} is a number`)

  // Each app has a registry of its own: a second instance in this process works alike.
  const other = await build(t)
  const e2 = await scrape(t, other)
  t.match(e2.text, typeLine('cybs_token_refreshes_total', 'counter'))
})

t.test('counters and histograms move as flows run; no merchant id, token or secret in any label', async t => {
  const { b, advance } = await movableClock(t)
  const mids = ['mid_metrics_alpha', 'mid_metrics_beta']
  const first = await scrape(t, b)
  t.equal(value(first, 'cybs_merchants', { status: 'connected' }), 0)

  for (const mid of mids) t.equal((await onboard(b, mid)).statusCode, 200, `onboard ${mid}`)
  const onboarded = await scrape(t, b)
  t.equal(value(onboarded, 'cybs_upstream_request_duration_seconds_count', { grant_type: 'authorization_code', outcome: 'ok' }), 2,
    'two code exchanges observed')
  t.ok(value(onboarded, 'cybs_upstream_request_duration_seconds_sum', { grant_type: 'authorization_code', outcome: 'ok' }) > 0)
  t.equal(value(onboarded, 'cybs_merchants', { status: 'connected' }), 0, 'the merchant gauge is cached for 30 s')

  t.equal(value(onboarded, 'cybs_oauth_callbacks_total', { outcome: 'connected' }) - value(first, 'cybs_oauth_callbacks_total', { outcome: 'connected' }), 2,
    'two successful onboardings: cybs_oauth_callbacks_total{outcome="connected"} +2')

  // Past the gauge's 30 s cache: the stored merchants are counted again.
  advance(31_000)
  const counted = await scrape(t, b)
  t.equal(value(counted, 'cybs_merchants', { status: 'connected' }), 2, 'cybs_merchants{status="connected"} = 2')
  t.match(counted.text, /^cybs_merchants\{status="connected"\} 2$/m, 'as exposed')
  t.equal(value(counted, 'cybs_merchants', { status: 'reauthorization_required' }), 0)

  // A forced refresh (CyberSource answers).
  const before = counted
  const refreshed = await b.app.inject({ method: 'POST', url: `/internal/v1/merchants/${mids[0]}/refresh`, headers: b.auth })
  t.equal(refreshed.statusCode, 200, refreshed.body)
  t.equal(b.sim.control.stats().refreshes, 1)
  const after = await scrape(t, b)
  const delta = (name: string, labels: Record<string, string>): number => value(after, name, labels) - value(before, name, labels)
  t.equal(delta('cybs_token_refreshes_total', { outcome: 'ok' }), 1, 'cybs_token_refreshes_total{outcome="ok"} +1')
  t.equal(delta('cybs_token_refresh_duration_seconds_count', { outcome: 'ok' }), 1, 'refresh duration observed once')
  t.ok(delta('cybs_token_refresh_duration_seconds_sum', { outcome: 'ok' }) > 0, 'with a positive duration')
  t.equal(delta('cybs_upstream_request_duration_seconds_count', { grant_type: 'refresh_token', outcome: 'ok' }), 1,
    'cybs_upstream_request_duration_seconds{grant_type="refresh_token",outcome="ok"} observed once')
  t.ok(delta('cybs_upstream_request_duration_seconds_sum', { grant_type: 'refresh_token', outcome: 'ok' }) > 0)
  t.equal(total(after, 'cybs_token_refreshes_total') - total(before, 'cybs_token_refreshes_total'), 1, 'no other refresh outcome moved')

  // Lookups.
  const lookedUp = await b.app.inject({ method: 'GET', url: `/internal/v1/merchants/${mids[0]}/access-token`, headers: b.auth })
  t.equal(lookedUp.statusCode, 200)
  const missing = await b.app.inject({ method: 'GET', url: '/internal/v1/merchants/mid_metrics_nobody/access-token', headers: b.auth })
  t.equal(missing.statusCode, 404)
  const looked = await scrape(t, b)
  t.equal(total(looked, 'cybs_token_lookups_total') - total(after, 'cybs_token_lookups_total'), 2,
    'two lookups counted in cybs_token_lookups_total')
  t.equal(value(looked, 'cybs_token_lookups_total', { outcome: 'merchant_not_found' }) - value(after, 'cybs_token_lookups_total', { outcome: 'merchant_not_found' }), 1,
    'the unknown merchant as cybs_token_lookups_total{outcome="merchant_not_found"}')

  // A refresh token CyberSource rejects: the refresh is counted as rejected, the merchant moves
  // to reauthorization_required in the gauge.
  t.ok(b.sim.control.revokeRefreshTokens(mids[1]) > 0)
  const rejected = await b.app.inject({ method: 'POST', url: `/internal/v1/merchants/${mids[1]}/refresh`, headers: b.auth })
  t.equal(rejected.statusCode, 409, rejected.body)
  advance(31_000)
  const last = await scrape(t, b)
  t.equal(value(last, 'cybs_token_refreshes_total', { outcome: 'rejected' }) - value(looked, 'cybs_token_refreshes_total', { outcome: 'rejected' }), 1)
  t.equal(value(last, 'cybs_upstream_request_duration_seconds_count', { grant_type: 'refresh_token', outcome: 'rejected' }), 1)
  t.equal(value(last, 'cybs_merchants', { status: 'connected' }), 1)
  t.equal(value(last, 'cybs_merchants', { status: 'reauthorization_required' }), 1)

  // Nothing identifying or secret anywhere in the exposition, labels included.
  const redis = new Redis(b.redis.url, { maxRetriesPerRequest: 1 })
  t.teardown(() => redis.disconnect())
  const store = createTokenStore(redis, createKeyRing(b.config.encryptionKeys), createRedisKeys(b.config.redisKeyPrefix))
  const forbidden = new Set<string>([...mids, 'mid_metrics_nobody', b.secrets.clientSecret, b.secrets.apiSecret, b.secrets.otherApiSecret, b.secrets.encryptionKey])
  for (const mid of mids) {
    const r = await store.get(mid)
    if (r === undefined) throw new Error(`${mid} not stored`)
    forbidden.add(r.accessToken).add(r.refreshToken)
  }
  for (const req of b.sim.control.requests()) {
    for (const f of ['code', 'refresh_token', 'client_secret']) {
      const v = req.form[f]
      if (typeof v === 'string') forbidden.add(v)
    }
  }
  const labelValues = new Set(last.samples.flatMap(s => Object.values(s.labels)))
  t.ok(labelValues.size > 0)
  const bad = [...labelValues].filter(v => forbidden.has(v) || [...forbidden].some(f => v.includes(f)))
  t.same(bad, [], 'no label value is a merchant id, token or secret')
  t.same([...forbidden].filter(f => last.text.includes(f)).map(f => f.slice(0, 12)), [], 'nor anywhere in the text')
  // Labels are fixed words: outcome, grant type, status, event type and the like, never an id.
  const allowed = ['enforced', 'event', 'grant_type', 'le', 'outcome', 'scope', 'state', 'status', 'type']
  t.same([...new Set(last.samples.filter(s => s.family.startsWith('cybs_')).flatMap(s => Object.keys(s.labels)))].filter(l => !allowed.includes(l)),
    [], 'the service labels only by fixed words')
})

t.test('GET /metrics answers while Redis is down (the merchant gauge keeps its last values)', async t => {
  const { b, advance } = await movableClock(t)
  t.equal((await onboard(b, 'mid_metrics_gamma')).statusCode, 200)
  t.equal(value(await scrape(t, b), 'cybs_merchants', { status: 'connected' }), 1)
  await b.redis.stop()
  advance(31_000)
  const e = await scrape(t, b)
  t.equal(value(e, 'cybs_merchants', { status: 'connected' }), 1, 'last known value')
  t.match(e.text, typeLine('process_cpu_user_seconds_total', 'counter'))
})
