// GET /metrics (SPEC §2 Operations): a Prometheus text exposition that a strict parser accepts,
// with the default process metrics and the service's own, whose values move as flows run, and
// whose labels never carry a merchant id, a token or a secret.
import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import { build, onboard, type Built } from '../helper.js'
import { createKeyRing } from '../../src/key-ring.js'
import { createRedisKeys } from '../../src/redis-keys.js'
import { createTokenStore } from '../../src/token-store.js'

// ---- a strict parser of the Prometheus text format 0.0.4 ------------------------------------

type MetricType = 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped'

interface Sample { name: string, family: string, labels: Record<string, string>, value: number }
interface Family { name: string, type: MetricType, help: string | undefined }
interface Exposition { families: Map<string, Family>, samples: Sample[] }

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/
const TYPES = new Set<string>(['counter', 'gauge', 'histogram', 'summary', 'untyped'])
const SUFFIXES: Record<MetricType, string[]> = {
  counter: [''],
  gauge: [''],
  untyped: [''],
  histogram: ['_bucket', '_sum', '_count'],
  summary: ['', '_sum', '_count']
}

/** A float as Go's strconv.ParseFloat reads it (what Prometheus uses): NaN and Inf in any case. */
function parseValue (text: string, where: string): number {
  // prom-client writes `Nan` (e.g. the event-loop lag mean before the first sample).
  if (/^nan$/i.test(text)) return NaN
  const inf = /^([-+]?)inf(inity)?$/i.exec(text)
  if (inf !== null) return inf[1] === '-' ? -Infinity : Infinity
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) throw new Error(`${where}: value ${JSON.stringify(text)} is not a number`)
  return Number(text)
}

/** Labels from just after `{`; returns them and the index just after `}`. */
function parseLabels (line: string, start: number, where: string): { labels: Record<string, string>, end: number } {
  const labels: Record<string, string> = {}
  let i = start
  for (;;) {
    if (line[i] === '}') return { labels, end: i + 1 }
    const eq = line.indexOf('=', i)
    if (eq < 0) throw new Error(`${where}: label without =`)
    const name = line.slice(i, eq)
    if (!LABEL_NAME.test(name)) throw new Error(`${where}: bad label name ${JSON.stringify(name)}`)
    if (name in labels) throw new Error(`${where}: label ${name} repeated`)
    if (line[eq + 1] !== '"') throw new Error(`${where}: label value of ${name} is not quoted`)
    let value = ''
    let j = eq + 2
    for (;; j++) {
      const c = line[j]
      if (c === undefined) throw new Error(`${where}: unterminated label value`)
      if (c === '"') break
      if (c === '\\') {
        const n = line[++j]
        if (n === '\\') value += '\\'
        else if (n === '"') value += '"'
        else if (n === 'n') value += '\n'
        else throw new Error(`${where}: bad escape \\${n ?? ''}`)
      } else {
        value += c
      }
    }
    labels[name] = value
    i = j + 1
    if (line[i] === ',') i++
    else if (line[i] !== '}') throw new Error(`${where}: expected , or } after label ${name}`)
  }
}

function parseExposition (text: string): Exposition {
  const families = new Map<string, Family>()
  const helps = new Map<string, string>()
  const samples: Sample[] = []
  const series = new Set<string>()
  let current: string | undefined
  if (!text.endsWith('\n')) throw new Error('the exposition must end with a newline')
  const lines = text.slice(0, -1).split('\n')
  for (const [n, line] of lines.entries()) {
    const where = `line ${n + 1}`
    if (line.trim() === '') continue
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+)(?: (.*))?$/.exec(line)
      if (m === null) throw new Error(`${where}: a comment that is neither HELP nor TYPE: ${line}`)
      const [, kind, name, rest = ''] = m
      if (!METRIC_NAME.test(name)) throw new Error(`${where}: bad metric name ${name}`)
      if (kind === 'HELP') {
        if (helps.has(name)) throw new Error(`${where}: second HELP for ${name}`)
        helps.set(name, rest.replace(/\\n/g, '\n').replace(/\\\\/g, '\\'))
      } else {
        if (!TYPES.has(rest)) throw new Error(`${where}: unknown type ${rest} for ${name}`)
        if (families.has(name)) throw new Error(`${where}: second TYPE for ${name}`)
        if (samples.some(s => s.family === name)) throw new Error(`${where}: TYPE of ${name} after its samples`)
        families.set(name, { name, type: rest as MetricType, help: undefined })
        current = name
      }
      continue
    }
    const nameMatch = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)
    if (nameMatch === null) throw new Error(`${where}: not a sample: ${line}`)
    const name = nameMatch[0]
    let i = name.length
    let labels: Record<string, string> = {}
    if (line[i] === '{') ({ labels, end: i } = parseLabels(line, i + 1, where))
    if (line[i] !== ' ') throw new Error(`${where}: expected a space before the value`)
    const parts = line.slice(i + 1).split(' ')
    if (parts.length > 2 || parts[0] === '') throw new Error(`${where}: expected "value [timestamp]"`)
    const value = parseValue(parts[0], where)
    if (parts.length === 2 && !/^-?\d+$/.test(parts[1])) throw new Error(`${where}: bad timestamp`)
    // The sample belongs to the family declared by the last TYPE line (so families are contiguous),
    // under one of the suffixes of its type.
    const family = current === undefined ? undefined : families.get(current)
    if (family === undefined) throw new Error(`${where}: sample ${name} before any TYPE line`)
    const suffix = SUFFIXES[family.type].find(s => name === family.name + s)
    if (suffix === undefined) throw new Error(`${where}: sample ${name} is not declared by a TYPE line (current family ${family.name} ${family.type})`)
    if (suffix === '_bucket' && labels.le === undefined) throw new Error(`${where}: bucket without le`)
    const key = `${name}${JSON.stringify(Object.entries(labels).sort())}`
    if (series.has(key)) throw new Error(`${where}: duplicate series ${key}`)
    series.add(key)
    samples.push({ name, family: family.name, labels, value })
  }
  for (const [name, help] of helps) {
    const f = families.get(name)
    if (f === undefined) throw new Error(`HELP for ${name} without a TYPE`)
    f.help = help
  }
  checkHistograms(families, samples)
  return { families, samples }
}

/** Buckets are cumulative and the +Inf bucket equals _count, per label set. */
function checkHistograms (families: Map<string, Family>, samples: Sample[]): void {
  for (const f of families.values()) {
    if (f.type !== 'histogram') continue
    const groups = new Map<string, { buckets: Array<[number, number]>, count?: number }>()
    for (const s of samples.filter(s => s.family === f.name)) {
      const { le, ...rest } = s.labels
      const key = JSON.stringify(Object.entries(rest).sort())
      const g = groups.get(key) ?? { buckets: [] }
      groups.set(key, g)
      if (s.name.endsWith('_bucket')) g.buckets.push([parseValue(le, f.name), s.value])
      else if (s.name.endsWith('_count')) g.count = s.value
    }
    for (const [key, g] of groups) {
      const sorted = g.buckets.slice().sort((a, b) => a[0] - b[0])
      for (let i = 1; i < sorted.length; i++) {
        if (sorted[i][1] < sorted[i - 1][1]) throw new Error(`${f.name}${key}: buckets are not cumulative`)
      }
      const inf = sorted.at(-1)
      if (inf === undefined || inf[0] !== Infinity) throw new Error(`${f.name}${key}: no +Inf bucket`)
      if (inf[1] !== g.count) throw new Error(`${f.name}${key}: +Inf bucket ${inf[1]} differs from _count ${String(g.count)}`)
    }
  }
}

// ---- helpers ------------------------------------------------------------------------------

async function scrape (t: Test, b: Built): Promise<Exposition & { text: string }> {
  const res = await b.app.inject({ method: 'GET', url: '/metrics' })
  t.equal(res.statusCode, 200, 'GET /metrics')
  t.match(String(res.headers['content-type']), /^text\/plain; version=0\.0\.4; charset=utf-8$/)
  return { ...parseExposition(res.body), text: res.body }
}

/** The value of one series; 0 when a labelled counter or histogram has not been touched yet. */
function value (e: Exposition, name: string, labels: Record<string, string> = {}): number {
  const found = e.samples.filter(s => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v) &&
    Object.keys(s.labels).length === Object.keys(labels).length)
  if (found.length > 1) throw new Error(`${name}: ${found.length} series match`)
  return found[0]?.value ?? 0
}

/** Sum over every series of a name. */
const total = (e: Exposition, name: string): number => e.samples.filter(s => s.name === name).reduce((a, s) => a + s.value, 0)

async function movableClock (t: Test): Promise<{ b: Built, advance: (ms: number) => void }> {
  let offset = 0
  const now = (): number => Date.now() + offset
  const b = await build(t, { now, simulatorOptions: { now } })
  return { b, advance: (ms) => { offset += ms } }
}

const SERVICE_FAMILIES: Record<string, MetricType> = {
  cybs_token_lookups_total: 'counter',
  cybs_token_refreshes_total: 'counter',
  cybs_token_refresh_duration_seconds: 'histogram',
  cybs_refresh_lock_waits_total: 'counter',
  cybs_refresh_lock_wait_seconds: 'histogram',
  cybs_oauth_callbacks_total: 'counter',
  cybs_upstream_request_duration_seconds: 'histogram',
  cybs_merchants: 'gauge'
}

// ---- the parser itself must reject what is not an exposition --------------------------------

t.test('the parser rejects malformed expositions', async t => {
  const ok = '# HELP a_total A.\n# TYPE a_total counter\na_total{x="1"} 3\n'
  t.equal(parseExposition(ok).samples[0].value, 3)
  t.same(parseExposition('# TYPE a gauge\na{x="1"} Nan\na{x="2"} +Inf\na{x="3"} -inf\na{x="4"} .5\n').samples.map(s => s.value), [NaN, Infinity, -Infinity, 0.5])
  t.same(parseExposition('# TYPE g gauge\ng{a="q\\"\\\\\\n",b="2",} -1.5e3 1700000000000\n').samples[0],
    { name: 'g', family: 'g', labels: { a: 'q"\\\n', b: '2' }, value: -1500 })
  const bad: Record<string, string> = {
    'undeclared sample': 'b_total 1\n',
    'sample of another family': '# TYPE a counter\nb 1\n',
    'value not a number': '# TYPE a gauge\na 1x\n',
    'value not a number (Infinite)': '# TYPE a gauge\na Infinite\n',
    'empty value': '# TYPE a gauge\na \n',
    'unquoted label': '# TYPE a gauge\na{x=1} 1\n',
    'bad label name': '# TYPE a gauge\na{1x="1"} 1\n',
    'unterminated labels': '# TYPE a gauge\na{x="1" 1\n',
    'unknown type': '# TYPE a thing\na 1\n',
    'second TYPE': '# TYPE a gauge\n# TYPE a gauge\n',
    'duplicate series': '# TYPE a gauge\na{x="1"} 1\na{x="1"} 2\n',
    'other comment': '# TYPE a gauge\n# hello\na 1\n',
    'no final newline': '# TYPE a gauge\na 1',
    'bucket without le': '# TYPE h histogram\nh_bucket 1\nh_count 1\n',
    'non-cumulative buckets': '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_count 1\nh_sum 0\n',
    'count differs from +Inf': '# TYPE h histogram\nh_bucket{le="+Inf"} 1\nh_count 2\nh_sum 0\n',
    'interleaved families': '# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na{x="2"} 1\n'
  }
  for (const [what, text] of Object.entries(bad)) t.throws(() => parseExposition(text), what)
})

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
    t.equal(e.families.get(name)?.type, type, `default metric ${name} (${type})`)
    t.ok(e.samples.some(s => s.family === name), `${name} has a sample`)
  }
  for (const [name, type] of Object.entries(SERVICE_FAMILIES)) {
    t.equal(e.families.get(name)?.type, type, `service metric ${name} (${type})`)
    t.ok((e.families.get(name)?.help ?? '') !== '', `${name} has a HELP text`)
  }
  t.equal(value(e, 'cybs_merchants', { status: 'connected' }), 0, 'no merchant stored yet')
  t.equal(value(e, 'cybs_merchants', { status: 'reauthorization_required' }), 0)
  for (const s of e.samples.filter(s => s.family.startsWith('cybs_'))) t.notOk(Number.isNaN(s.value), `${s.name} is a number`)

  // Each app has a registry of its own: a second instance in this process works alike.
  const other = await build(t)
  const e2 = await scrape(t, other)
  t.equal(e2.families.get('cybs_token_refreshes_total')?.type, 'counter')
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
  t.same([...new Set(last.samples.filter(s => s.family.startsWith('cybs_')).flatMap(s => Object.keys(s.labels)))].sort(),
    ['grant_type', 'le', 'outcome', 'status'], 'the service labels only by outcome, grant type and status')
})

t.test('GET /metrics answers while Redis is down (the merchant gauge keeps its last values)', async t => {
  const { b, advance } = await movableClock(t)
  t.equal((await onboard(b, 'mid_metrics_gamma')).statusCode, 200)
  t.equal(value(await scrape(t, b), 'cybs_merchants', { status: 'connected' }), 1)
  await b.redis.stop()
  try {
    advance(31_000)
    const e = await scrape(t, b)
    t.equal(value(e, 'cybs_merchants', { status: 'connected' }), 1, 'last known value')
    t.ok(e.families.has('process_cpu_user_seconds_total'))
  } finally {
    // test/helpers/redis.ts cannot stop a server twice (its teardown would hang): restart it.
    await b.redis.start()
  }
})
