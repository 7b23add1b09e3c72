// A bounded soak: two replicas on one Redis and one simulator, 32 s of lookups, forced
// refreshes and new or repeated onboardings, while CyberSource fails about 10 % of token requests
// and access tokens live 75 s (so lookups keep needing refreshes, across both replicas). The
// simulator rotates refresh tokens: a lost or stale refresh token shows as a rejected grant (409).
// At the end: no token lost, no 409, no 5xx but 503 upstream_unavailable, and RSS stable.
import t from 'tap'
import { PerformanceObserver, constants } from 'node:perf_hooks'
import { setImmediate, setTimeout as sleep } from 'node:timers/promises'
import { build, secrets, startSimulator, type Built } from '../helper.js'
import { startRedis } from '../helpers/redis.js'
import { FAILURES } from '../../src/pages.js'
import { decodeJwtPayload } from '../../src/cybersource/jwt.js'
import { MIN_VALIDITY_MS } from '../../src/refresh-policy.js'
import type { Fault } from '../../src/simulator/app.js'
import {
  NO_RATE_LIMIT, admin, assertRefreshTokenAlive, callback, connectState, errorCode, forceRefresh, guarded, lookup,
  pageTitle, type Res
} from '../faults/helpers.js'

const MERCHANTS = 30
const ONBOARDED_FIRST = 20
/** Merchants only ever looked up: their refreshes can only be the lookups' own. */
const LOOKUP_ONLY = 5
const WARM_UP_MS = 8000
const MEASURED_MS = 24_000
/** V8's memory reducer collects 8 or 16 s after allocation stops; a guard, not a goal. */
const SETTLE_MAX_MS = 20_000
const WORKERS = 8
const FAILURE_RATE = 0.1
/** Faults CyberSource is seen to produce under load; each is an outage, never an answer about the grant. */
const FAULT_CYCLE: Fault[] = ['error_500_empty', 'drop', 'error_502_html']
const HANG_MS = 15_000

t.test('soak: two replicas, lookups, refreshes and onboardings while CyberSource fails 10 % of the time', async t => {
  const startRss = process.memoryUsage.rss()
  const redis = await startRedis(t)
  const s = secrets()
  const sim = await startSimulator(t, { clientSecret: s.clientSecret, accessTokenTtlSeconds: 75, rotateRefreshTokens: true })
  const env = { ...NO_RATE_LIMIT, LOG_LEVEL: 'warn' }
  const replicas: Built[] = [
    await build(t, { redis, simulator: sim, secrets: s, env }),
    await build(t, { redis, simulator: sim, secrets: s, env })
  ]
  const a = admin(t, replicas[0])
  const mids = Array.from({ length: MERCHANTS }, (_, i) => `mid_soak_${String(i).padStart(2, '0')}`)
  const connected = new Set<string>()
  const lookupOnly = new Set(mids.slice(0, LOOKUP_ONLY))
  const pick = <T>(xs: T[]): T => xs[Math.floor(Math.random() * xs.length)]

  const counts = new Map<string, number>()
  const violations: string[] = []
  const count = (key: string): void => { counts.set(key, (counts.get(key) ?? 0) + 1) }
  const violate = (what: string): void => { if (violations.length < 20) violations.push(what) }
  const is5xxOtherThanUpstream = (res: Res, page: boolean): boolean => res.statusCode >= 500 &&
    !(res.statusCode === 503 && (page ? pageTitle(res.body) === FAILURES.upstream_unavailable.title : errorCode(res) === 'upstream_unavailable'))

  async function onboardOnce (b: Built, mid: string): Promise<void> {
    const res = await guarded(callback(b, sim.control.issueCode(mid), await connectState(b)), HANG_MS, `callback of ${mid}`)
    count(`callback ${res.statusCode}`)
    if (res.statusCode === 200) connected.add(mid)
    else if (is5xxOtherThanUpstream(res, true) || res.statusCode !== 503) violate(`callback of ${mid}: ${res.statusCode} "${pageTitle(res.body) ?? ''}"`)
  }

  async function one (b: Built): Promise<void> {
    const roll = Math.random()
    const known = [...connected]
    if (roll < 0.05 || known.length === 0) {
      // New merchants first, then repeated onboardings (a new grant replaces the old one).
      const fresh = mids.filter(m => !connected.has(m))
      await onboardOnce(b, fresh.length > 0 ? pick(fresh) : pick(mids.filter(m => !lookupOnly.has(m))))
      return
    }
    const forced = roll < 0.15
    const mid = pick(forced ? known.filter(m => !lookupOnly.has(m)) : known)
    const res = await guarded(forced ? forceRefresh(b, mid) : lookup(b, mid), HANG_MS, `${forced ? 'refresh' : 'lookup'} of ${mid}`)
    const code = res.statusCode === 200 ? '' : String(errorCode(res) ?? '')
    count(`${forced ? 'refresh' : 'lookup'} ${res.statusCode} ${code}`.trim())
    if (res.statusCode === 409) violate(`${mid}: 409 ${code}`)
    else if (is5xxOtherThanUpstream(res, false)) violate(`${mid}: ${res.statusCode} ${code}`)
    else if (res.statusCode === 200 && !forced) {
      const body = res.json()
      if (decodeJwtPayload(String(body.access_token))?.merchant_id !== mid) violate(`${mid}: served a token that names another merchant`)
      if (body.expires_in < MIN_VALIDITY_MS / 1000 - 1) violate(`${mid}: served a token with ${String(body.expires_in)} s left`)
    } else if (res.statusCode !== 200 && res.statusCode !== 503) violate(`${mid}: ${res.statusCode} ${code}`)
  }

  const state = { running: false }
  let crashed: unknown
  const worker = async (w: number): Promise<void> => {
    while (state.running) {
      await one(replicas[w % replicas.length])
      // Lookups served from memory never leave the microtask queue: let timers (and others) run.
      await setImmediate()
      await sleep(Math.random() * 20)
    }
  }
  async function load (ms: number): Promise<void> {
    state.running = true
    const workers = Promise.all(Array.from({ length: WORKERS }, async (_, w) => await worker(w))).catch((err: unknown) => { crashed ??= err })
    await sleep(ms)
    state.running = false
    await workers
  }

  const gc = (globalThis as { gc?: () => void }).gc
  /**
   * RSS once garbage is collected: by global.gc when the process has it, else by idling until
   * V8's memory reducer runs a full collection (it does so some seconds after allocation stops).
   */
  async function settledRss (): Promise<{ rss: number, how: string, settled: boolean }> {
    if (gc !== undefined) {
      gc()
      await sleep(200)
      gc()
      return { rss: process.memoryUsage.rss(), how: 'forced GC', settled: true }
    }
    const gcSeen = { full: false }
    const observer = new PerformanceObserver(list => {
      if (list.getEntries().some(e => (e as unknown as { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR)) gcSeen.full = true
    })
    observer.observe({ entryTypes: ['gc'] })
    const started = Date.now()
    while (!gcSeen.full && Date.now() - started < SETTLE_MAX_MS) await sleep(100)
    observer.disconnect()
    await sleep(300)
    return { rss: process.memoryUsage.rss(), how: gcSeen.full ? `idle full GC after ${Date.now() - started} ms` : `no full GC within ${SETTLE_MAX_MS} ms`, settled: gcSeen.full }
  }

  for (const [i, mid] of mids.slice(0, ONBOARDED_FIRST).entries()) await onboardOnce(replicas[i % 2], mid)
  t.equal(connected.size, ONBOARDED_FIRST, 'the first merchants are onboarded')

  sim.control.setBehavior({ fault: FAULT_CYCLE[0], failureRate: FAILURE_RATE })
  let faultIndex = 0
  const cycler = setInterval(() => {
    faultIndex = (faultIndex + 1) % FAULT_CYCLE.length
    sim.control.setBehavior({ fault: FAULT_CYCLE[faultIndex], failureRate: FAILURE_RATE })
  }, 5000)
  t.teardown(() => clearInterval(cycler))

  await load(WARM_UP_MS)
  const base = await settledRss()
  const baseHeap = process.memoryUsage().heapUsed
  await load(MEASURED_MS)
  clearInterval(cycler)
  const end = await settledRss()
  t.equal(crashed, undefined, 'every request was answered')

  const stats = sim.control.stats()
  t.comment(`answers: ${JSON.stringify(Object.fromEntries([...counts].sort()))}`)
  t.comment(`CyberSource: ${JSON.stringify(stats)}`)
  const growth = (end.rss - base.rss) / base.rss
  const mb = (n: number): string => `${(n / 1048576).toFixed(1)} MB`
  t.comment(`RSS ${mb(startRss)} at the start, ${mb(base.rss)} after warm-up (${base.how}), ${mb(end.rss)} at the end (${end.how}): ` +
    `${(growth * 100).toFixed(1)} %; heap used ${mb(baseHeap)} after warm-up, ${mb(process.memoryUsage().heapUsed)} at the end`)

  t.same(violations, [], 'no 409, no 5xx but 503 upstream_unavailable, every token the merchant\'s own with 60 s left')
  const total = (prefix: string): number => [...counts].filter(([k]) => k.startsWith(prefix)).reduce((n, [, v]) => n + v, 0)
  t.ok(total('lookup 200') > 1000 && total('refresh 200') > 100 && total('callback 200') > ONBOARDED_FIRST, 'the mix ran')
  t.ok(stats.failures > 0, 'CyberSource failed now and then')
  t.equal(connected.size, MERCHANTS, 'every merchant got connected')
  // Readings of an unsettled heap would compare garbage, not the working set.
  t.ok(base.settled && end.settled, 'both readings follow a full collection')
  t.ok(growth < 0.1, `RSS grew by less than 10 % (${(growth * 100).toFixed(1)} %)`)
  for (const mid of lookupOnly) {
    const rec = await a.stored(mid)
    t.ok(rec.lastRefreshedAt !== null && rec.version >= 2, `${mid}: lookups alone refreshed its tokens (version ${rec.version})`)
  }

  // No token lost: with CyberSource well again, every merchant's stored refresh token is the live one.
  sim.control.setBehavior({})
  for (const [i, mid] of [...connected].sort().entries()) await assertRefreshTokenAlive(t, replicas[i % 2], a, mid)
  // Every 5xx answer is logged at error ("request failed"); only the expected ones may be there.
  const errors = replicas.flatMap(b => b.logs.lines().filter(l => Number(l.level) >= 50))
    .map(l => `${String(l.msg)} ${String((l.err as { code?: unknown } | undefined)?.code ?? '')}`.trim().toLowerCase())
    .filter(e => e !== 'request failed upstream_unavailable')
  t.same([...new Set(errors)], [], 'nothing else was logged at error')
})
