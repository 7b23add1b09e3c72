// The state quota on a real Redis, without an app: per-client and total caps over a sliding
// window (a fake clock moves it), the refund when the total refuses, atomicity under concurrency,
// keys under the prefix with a TTL, Redis down (closed: a 503, never an uncounted state), and
// Redis Cluster, where the client's and the total's counters live in different slots.
import t from 'tap'
import fc from 'fast-check'
import { Cluster, Redis } from 'ioredis'
import calculateSlot from 'cluster-key-slot'
import { scanKeys, startRedis } from '../helpers/redis.js'
import { HOST, startCluster } from '../helpers/redis-topologies.js'
import { createRedisKeys } from '../../src/redis-keys.js'
import { createStateQuota, SLICES, type Admission, type StateQuotaOptions } from '../../src/state-quota.js'
import { StorageUnavailableError } from '../../src/errors.js'
import { waitReady } from '../../src/redis-client.js'

const server = await startRedis(t)
const clients: Redis[] = []
const client = (): Redis => {
  const c = new Redis(server.url, { maxRetriesPerRequest: 1 })
  c.on('error', () => {})
  clients.push(c)
  return c
}
t.teardown(() => { for (const c of clients) c.disconnect() })
const admin = client()

let prefixes = 0
/** A quota with its own key prefix and clock (ms; moved by the test). */
function quota (opts: Omit<StateQuotaOptions, 'now'>, redis: Redis | Cluster = client()): { q: ReturnType<typeof createStateQuota>, clock: { ms: number }, prefix: string } {
  const clock = { ms: 1_000_000_000_000 }
  const keys = createRedisKeys(`quota-test-${++prefixes}:`)
  return { q: createStateQuota(redis, keys, { ...opts, now: () => clock.ms }), clock, prefix: keys.stateQuota }
}

const ok = (a: Admission): boolean => a.ok

t.test('per client: the cap refuses that client only', async t => {
  const { q, prefix } = quota({ perClient: 3, total: 100, windowSeconds: 600 })
  for (let i = 0; i < 3; i++) t.same(await q.admit('203.0.113.7'), { ok: true }, `state ${i + 1}`)
  const refused = await q.admit('203.0.113.7')
  t.match(refused, { ok: false, scope: 'client' }, 'the 4th is refused for the client')
  t.same(await q.admit('203.0.113.8'), { ok: true }, 'another client is not')
  t.same(await q.admit('2001:db8:0:1::/64'), { ok: true })
  const keys = (await scanKeys(admin, `${prefix}*`)).sort()
  t.same(keys, [`${prefix}client:2001:db8:0:1::/64`, `${prefix}client:203.0.113.7`, `${prefix}client:203.0.113.8`, `${prefix}total`], 'one key per client and the total')
  t.equal(await admin.hget(`${prefix}total`, String(Math.floor(1_000_000_000_000 / 60_000))), '5', 'the total counted the 5 admitted states, not the refused one')
})

t.test('total: the cap refuses everyone; the refused client is not charged', async t => {
  const { q, prefix } = quota({ perClient: 2, total: 4, windowSeconds: 600 })
  for (const c of ['10.0.0.1', '10.0.0.1', '10.0.0.2', '10.0.0.3']) t.same(await q.admit(c), { ok: true })
  t.match(await q.admit('10.0.0.3'), { ok: false, scope: 'total' }, 'a client under its own cap: the total refuses')
  t.match(await q.admit('10.0.0.1'), { ok: false, scope: 'client' }, 'a client at its own cap: its own cap refuses first')
  t.match(await q.admit('10.0.0.9'), { ok: false, scope: 'total' })
  t.equal(await admin.exists(`${prefix}client:10.0.0.9`), 0, 'a new client refused by the total leaves no key behind')
  const counts = Object.values(await admin.hgetall(`${prefix}client:10.0.0.3`)).map(Number)
  t.same(counts, [1], '10.0.0.3 holds one count: its refused attempt was given back')
})

t.test('sliding window: a state counts until its slice has left the window; Retry-After says when', async t => {
  const windowSeconds = 100
  const sliceMs = windowSeconds * 1000 / SLICES
  const { q, clock } = quota({ perClient: 3, total: 1000, windowSeconds })
  clock.ms = Math.ceil(clock.ms / sliceMs) * sliceMs // the start of a slice
  const start = clock.ms
  t.same(await q.admit('a'), { ok: true })
  clock.ms = start + 30_000
  t.same(await q.admit('a'), { ok: true })
  t.same(await q.admit('a'), { ok: true })
  clock.ms = start + 50_000
  // The oldest state's slice [start, start + 10 s) leaves the window at start + 110 s.
  t.same(await q.admit('a'), { ok: false, scope: 'client', retryAfterSeconds: 60 })
  clock.ms = start + 109_999
  t.same(await q.admit('a'), { ok: false, scope: 'client', retryAfterSeconds: 1 })
  clock.ms = start + 110_000
  t.same(await q.admit('a'), { ok: true }, 'admitted once the oldest slice has left the window')
  // Now full again: two states of start + 30 s and one of start + 110 s.
  t.same(await q.admit('a'), { ok: false, scope: 'client', retryAfterSeconds: 30 }, 'then the slice of start + 30 s (two states) is next')
  clock.ms = start + 10_000_000
  for (let i = 0; i < 3; i++) t.same(await q.admit('a'), { ok: true }, 'much later: the full cap again')
})

t.test('property: within any window, admitted states never exceed the caps, and refusals happen only at a cap', async t => {
  const windowSeconds = 60
  const windowMs = windowSeconds * 1000
  const sliceMs = windowMs / SLICES
  const perClient = 4
  const total = 7
  // Arrivals: gaps of 0–30 s, from one of four clients.
  const arrivals = fc.array(fc.record({ gap: fc.integer({ min: 0, max: 30_000 }), client: fc.constantFrom('a', 'b', 'c', 'd') }), { minLength: 1, maxLength: 60 })
  await fc.assert(fc.asyncProperty(arrivals, async (list) => {
    const { q, clock } = quota({ perClient, total, windowSeconds }, admin)
    const admitted: Array<{ at: number, client: string }> = []
    for (const { gap, client } of list) {
      clock.ms += gap
      const a = await q.admit(client)
      // Admitted states still alive (started within the window).
      const alive = admitted.filter(s => s.at > clock.ms - windowMs)
      // Admitted states counted by the slices that may still hold a live one (one slice more).
      const counted = admitted.filter(s => Math.floor(s.at / sliceMs) >= Math.floor(clock.ms / sliceMs) - SLICES)
      if (a.ok) {
        admitted.push({ at: clock.ms, client })
        if (alive.length + 1 > total) return false
        if (alive.filter(s => s.client === client).length + 1 > perClient) return false
      } else if (a.scope === 'client') {
        if (counted.filter(s => s.client === client).length < perClient) return false
      } else if (counted.length < total) {
        return false
      }
    }
    return true
  }), { numRuns: 150 })
  t.pass('150 random arrival sequences')
})

t.test('atomic: concurrent admissions from one client on several connections never pass the cap', async t => {
  const keys = createRedisKeys(`quota-test-${++prefixes}:`)
  const quotas = [client(), client(), client()].map(r => createStateQuota(r, keys, { perClient: 10, total: 1000, windowSeconds: 600 }))
  const results = await Promise.all(Array.from({ length: 90 }, async (_, i) => await quotas[i % 3].admit('198.51.100.1')))
  t.equal(results.filter(ok).length, 10, 'exactly the cap admitted')
  const totals = await Promise.all(Array.from({ length: 60 }, async (_, i) => await quotas[i % 3].admit(`198.51.100.${10 + i}`)))
  t.equal(totals.filter(ok).length, 60, 'other clients are not affected')
})

t.test('keys: under the prefix, with a TTL of one window and one slice, at most SLICES + 1 fields', async t => {
  const windowSeconds = 600
  const { q, clock, prefix } = quota({ perClient: 1000, total: 100_000, windowSeconds })
  for (let i = 0; i < 50; i++) {
    clock.ms += 20_000
    await q.admit('192.0.2.1')
  }
  for (const key of await scanKeys(admin, `${prefix}*`)) {
    const pttl = await admin.pttl(key)
    t.ok(pttl > 0 && pttl <= windowSeconds * 1000 * (SLICES + 1) / SLICES, `${key} expires (${pttl} ms)`)
    t.ok(await admin.hlen(key) <= SLICES + 1, `${key}: at most ${SLICES + 1} slices`)
  }
})

t.test('Redis down: admit rejects with StorageUnavailableError (closed, not open)', async t => {
  const lone = await startRedis(t)
  const r = new Redis(lone.url, { maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => 50 })
  r.on('error', () => {})
  t.teardown(() => r.disconnect())
  t.ok(await waitReady(r, 5000), 'connected')
  const q = createStateQuota(r, createRedisKeys('down:'), { perClient: 5, total: 5, windowSeconds: 60 })
  t.same(await q.admit('a'), { ok: true })
  await lone.stop()
  await t.rejects(q.admit('a'), StorageUnavailableError)
  await lone.start()
})

t.test('Redis Cluster: the client and total counters on different slots, each one script', async t => {
  const cluster = await startCluster(t, 3)
  const c = new Cluster(cluster.spec.split(',').map(hp => ({ host: HOST, port: Number(hp.split(':')[1]) })), { redisOptions: { maxRetriesPerRequest: 1 } })
  c.on('error', () => {})
  t.teardown(() => { c.disconnect() })
  const keys = createRedisKeys('cluster-quota:')
  const q = createStateQuota(c, keys, { perClient: 2, total: 5, windowSeconds: 60 })
  const slots = new Set(['a', 'b', 'c', 'd'].map(b => calculateSlot(`${keys.stateQuota}client:${b}`)))
  slots.add(calculateSlot(`${keys.stateQuota}total`))
  t.ok(slots.size > 1, 'the keys hash to several slots')
  const got = []
  for (const b of ['a', 'a', 'a', 'b', 'b', 'c', 'd']) got.push(await q.admit(b))
  t.match(got, [{ ok: true }, { ok: true }, { ok: false, scope: 'client' }, { ok: true }, { ok: true }, { ok: true }, { ok: false, scope: 'total' }])
  t.equal(await c.exists(`${keys.stateQuota}client:d`), 0, 'refunded across slots')
})
