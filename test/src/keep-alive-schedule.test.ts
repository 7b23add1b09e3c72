// The keep-alive schedule on a real Redis: the due-time policy and its spread, the store wrapper
// that keeps the schedule in step with every write, the claim and its lease, the conditional
// follow-ups, the backoff script, and the one-time scheduling of merchants stored before.
import t, { type Test } from 'tap'
import { randomBytes } from 'node:crypto'
import { Redis } from 'ioredis'
import { startRedis } from '../helpers/redis.js'
import { HOUR, newRecord } from '../helpers/records.js'
import { createKeyRing } from '../../src/key-ring.js'
import { createRedisKeys, type RedisKeys } from '../../src/redis-keys.js'
import { createTokenStore, type TokenStore } from '../../src/token-store.js'
import { createKeepAliveSchedule, withKeepAlive, type KeepAliveSchedule } from '../../src/keep-alive-schedule.js'
import { MIGRATION_DONE, migrateSchedule } from '../../src/keep-alive-migration.js'

const DAY = 24 * HOUR
const RENEW_BEFORE_S = 30 * 24 * 3600
const RENEW_BEFORE = RENEW_BEFORE_S * 1000
const silent = { info: () => {}, warn: () => {} }

interface Setup { redis: Redis, keys: RedisKeys, raw: TokenStore, store: TokenStore, schedule: KeepAliveSchedule, clock: { t: number } }

async function setup (t: Test, random?: () => number): Promise<Setup> {
  const server = await startRedis(t)
  const redis = new Redis(server.url, { maxRetriesPerRequest: 1 })
  t.teardown(() => redis.disconnect())
  const keys = createRedisKeys('cybs:')
  const clock = { t: Date.now() }
  const raw = createTokenStore(redis, createKeyRing([{ kid: 'k1', key: randomBytes(32) }]), keys)
  const schedule = createKeepAliveSchedule(redis, keys, { renewBeforeSeconds: RENEW_BEFORE_S, now: () => clock.t, random })
  return { redis, keys, raw, store: withKeepAlive(raw, schedule, silent), schedule, clock }
}

t.test('due time: renewBefore ahead of the expiry plus up to a quarter of it, never in the past', async t => {
  const { schedule, clock } = await setup(t)
  const exp = clock.t + 365 * DAY
  const dues = Array.from({ length: 200 }, () => schedule.dueAt(exp))
  t.ok(dues.every(due => due >= exp - RENEW_BEFORE && due <= exp - RENEW_BEFORE + RENEW_BEFORE / 4), 'inside the jitter window')
  t.ok(dues.every(due => Number.isInteger(due)), 'whole milliseconds')
  t.equal(schedule.dueAt(clock.t + DAY), clock.t, 'already inside the margin: due now')
  t.equal(schedule.dueAt(clock.t - DAY), clock.t, 'expired: due now (the claimer unschedules it)')
})

t.test('the spread: 1,000 merchants onboarded at once are due across the whole jitter window', async t => {
  const { store, redis, keys, clock } = await setup(t)
  const exp = clock.t + 365 * DAY
  await Promise.all(Array.from({ length: 1000 }, async (_, i) => await store.put(newRecord(`m${i}`, { refreshTokenExpiresAt: exp }))))
  const flat = await redis.zrange(keys.keepAliveKey('due'), 0, -1, 'WITHSCORES')
  const scores = flat.filter((_, i) => i % 2 === 1).map(Number)
  t.equal(scores.length, 1000, 'every merchant is scheduled')
  const start = exp - RENEW_BEFORE
  const window = RENEW_BEFORE / 4
  t.ok(scores.every(s => s >= start && s <= start + window), 'all inside the window')
  const buckets = new Array<number>(10).fill(0)
  for (const s of scores) buckets[Math.min(9, Math.floor((s - start) / window * 10))]++
  // 100 expected per tenth; 50-150 is more than five standard deviations either way.
  t.ok(buckets.every(n => n >= 50 && n <= 150), `every tenth of the window holds about a tenth: ${buckets.join(' ')}`)
  t.ok(Math.max(...scores) - Math.min(...scores) > 0.9 * window, 'the spread covers the window')
})

t.test('the store wrapper keeps the schedule in step with every write', async t => {
  const { store, raw, schedule, clock } = await setup(t, () => 0)
  const exp = clock.t + 365 * DAY
  const v = await store.put(newRecord('m1', { refreshTokenExpiresAt: exp }))
  t.equal(await schedule.score('m1'), exp - RENEW_BEFORE, 'a new onboarding is scheduled')

  const meta = await raw.getMeta('m1')
  await store.put(newRecord('m1', { refreshTokenExpiresAt: exp + DAY }), { version: v!, grant: meta!.grant })
  t.equal(await schedule.score('m1'), exp + DAY - RENEW_BEFORE, 'a refresh moves it to the new expiry')

  const stale = await store.put(newRecord('m1', { refreshTokenExpiresAt: exp + 9 * DAY }), { version: v!, grant: meta!.grant })
  t.equal(stale, undefined, 'a stale writer loses')
  t.equal(await schedule.score('m1'), exp + DAY - RENEW_BEFORE, 'and the schedule follows what is stored, not the loser')

  const now = await raw.getMeta('m1')
  t.not(await store.markReauthorizationRequired('m1', now!), undefined)
  t.equal(await schedule.score('m1'), undefined, 'a reauthorization unschedules')

  await store.put(newRecord('m1', { refreshTokenExpiresAt: exp }))
  t.ok(await schedule.score('m1'), 'a new onboarding schedules again')
  t.equal(await store.delete('m1'), true)
  t.equal(await schedule.score('m1'), undefined, 'a delete unschedules')
  t.equal(await store.delete('m1'), false, 'a delete of nothing still says so')

  await store.put(newRecord('m2', { status: 'reauthorization_required' }))
  t.equal(await schedule.score('m2'), undefined, 'a record that is not connected is not scheduled')
})

t.test('the schedule never fails a write', async t => {
  const { raw, schedule } = await setup(t)
  const down = async (): Promise<never> => { throw new Error('schedule slot down') }
  const broken: KeepAliveSchedule = { ...schedule, add: down, addEarlier: down, remove: down }
  const warnings: unknown[] = []
  const store = withKeepAlive(raw, broken, { warn: (o: unknown) => { warnings.push(o) } } as never)
  t.ok(await store.put(newRecord('m1')), 'the tokens are stored')
  t.ok(await raw.getMeta('m1'), 'and readable')
  t.equal(await store.delete('m1'), true, 'a delete goes through')
  t.ok(warnings.length >= 3, 'each failure is logged')
})

t.test('a refresh whose write fails leaves the merchant due by the refresh token still stored', async t => {
  const { raw, schedule, clock } = await setup(t)
  const store = withKeepAlive(raw, schedule, silent)
  await store.put(newRecord('m1', { refreshTokenExpiresAt: clock.t + 20 * DAY }))
  const before = await schedule.score('m1') as number
  // The store's write fails after CyberSource extended the grant by a year.
  const failing: TokenStore = { ...raw, put: async () => { throw new Error('storage unavailable') } }
  const wrapped = withKeepAlive(failing, schedule, silent)
  const current = (await raw.getMeta('m1'))!
  await t.rejects(wrapped.put(newRecord('m1', { refreshTokenExpiresAt: clock.t + 365 * DAY }), current), /storage unavailable/)
  t.ok(await schedule.score('m1') as number <= before, 'still due by the stored expiry, never later')

  // A refresh that loses to a delete leaves no entry behind.
  const lost = withKeepAlive({ ...raw, put: async () => undefined }, schedule, silent)
  await raw.delete('m1')
  await schedule.remove('m1')
  await lost.put(newRecord('m1', { refreshTokenExpiresAt: clock.t + 365 * DAY }), current)
  t.equal(await schedule.score('m1'), undefined, 'a deleted merchant is not scheduled again')
})

t.test('claims lease due merchants once across claimers, and a lease that runs out brings them back', async t => {
  const { schedule, clock } = await setup(t)
  for (let i = 0; i < 5; i++) await schedule.add(`d${i}`, clock.t - i)
  await schedule.add('later', clock.t + 60_000)
  const lease = clock.t + 10_000
  const first = await schedule.claim(3, lease)
  t.equal(first.length, 3, 'LIMIT is respected')
  const second = await schedule.claim(10, lease)
  t.same([...first, ...second].sort(), ['d0', 'd1', 'd2', 'd3', 'd4'], 'each due merchant once, the later one not')
  t.same(await schedule.claim(10, lease), [], 'nothing left: leased entries are not due')
  t.equal((await schedule.stats()).due, 0)
  clock.t += 10_001
  t.equal((await schedule.claim(10, clock.t + 10_000)).length, 5, 'after the lease, every one is claimable again')
})

t.test('follow-ups of a claim only act while the entry is still under that lease', async t => {
  const { schedule, clock } = await setup(t)
  await schedule.add('m', clock.t)
  const lease = clock.t + 5000
  await schedule.claim(1, lease)
  await schedule.add('m', clock.t + 99_000) // a write of the merchant meanwhile
  t.equal(await schedule.settle('m', lease, null, false), false, 'a removal does not undo the write')
  t.equal(await schedule.backoff('m', lease, 1000, 8000), undefined, 'nor does a backoff')
  t.equal(await schedule.score('m'), clock.t + 99_000)
  await schedule.add('m', clock.t)
  const lease2 = clock.t + 6000
  await schedule.claim(1, lease2)
  t.equal(await schedule.settle('m', lease2, null, true), true, 'under its lease, it acts')
  t.equal(await schedule.score('m'), undefined)
})

t.test('backoff: the delay doubles per failure up to the cap, and a success clears the count', async t => {
  const { schedule, redis, keys, clock } = await setup(t)
  const delays: number[] = []
  for (let i = 0; i < 6; i++) {
    await schedule.add('m', clock.t)
    const lease = clock.t + 1000
    await schedule.claim(1, lease)
    const r = await schedule.backoff('m', lease, 1000, 8000)
    t.equal(r?.failures, i + 1)
    delays.push(await schedule.score('m') as number - clock.t)
  }
  t.same(delays, [1000, 2000, 4000, 8000, 8000, 8000])
  await schedule.add('m', clock.t)
  await schedule.claim(1, clock.t + 1000)
  await schedule.settle('m', clock.t + 1000, clock.t + DAY, true)
  t.equal(await redis.hget(keys.keepAliveKey('failures'), 'm'), null, 'failures forgotten')
})

t.test('once: true at most once per period for a merchant', async t => {
  const { schedule } = await setup(t)
  t.equal(await schedule.once('m', 60_000), true)
  t.equal(await schedule.once('m', 60_000), false)
  t.equal(await schedule.once('n', 60_000), true)
})

t.test('migration: merchants stored before keep-alive are scheduled once, resumably, by one replica', async t => {
  const { raw, schedule, redis, keys, clock } = await setup(t)
  const exp = clock.t + 365 * DAY
  for (let i = 0; i < 30; i++) await raw.put(newRecord(`old${i}`, { refreshTokenExpiresAt: exp }))
  await raw.put(newRecord('marked', { status: 'reauthorization_required' }))
  await schedule.add('old0', clock.t + 5) // written since by a replica with keep-alive: kept as is
  const marker = keys.keepAliveKey('migration')
  const lock = keys.keepAliveKey('migration-lock')

  await redis.set(lock, 'someone-else', 'PX', 60_000)
  t.same(await migrateSchedule({ redis, keys, store: raw, schedule, log: silent }), { state: 'busy', added: 0 }, 'another replica holds it')
  await redis.del(lock)

  let reads = 0
  const failing = { getMeta: async (id: string) => { if (++reads > 4) throw new Error('replica died'); return await raw.getMeta(id) } }
  await t.rejects(migrateSchedule({ redis, keys, store: failing, schedule, log: silent, batch: 2 }))
  const saved = await redis.get(marker)
  t.match(saved, /^\d+:\d+$/, 'the position reached is saved')
  await redis.del(lock) // the dead replica's lock expires

  const resumed = await migrateSchedule({ redis, keys, store: raw, schedule, log: silent, batch: 2 })
  t.equal(resumed.state, 'done')
  t.equal(await redis.get(marker), MIGRATION_DONE)
  const sweep = await redis.pttl(marker)
  t.ok(sweep > 6 * DAY && sweep <= 7 * DAY, 'the finished scan stands a week, then the sweep runs again')
  t.equal(await redis.exists(lock), 0, 'the lock is released')
  t.equal((await schedule.stats()).size, 30, 'every connected merchant is scheduled, the marked one not')
  t.equal(await schedule.score('old0'), clock.t + 5, 'an existing entry is not overwritten')
  const scores = (await redis.zrange(keys.keepAliveKey('due'), 0, -1, 'WITHSCORES')).filter((_, i) => i % 2 === 1).map(Number)
  t.ok(scores.filter(s => s !== clock.t + 5).every(s => s >= exp - RENEW_BEFORE && s <= exp - RENEW_BEFORE / 4 * 3), 'due times from each record')

  t.same(await migrateSchedule({ redis, keys, store: raw, schedule, log: silent }), { state: 'done', added: 0 }, 'done: nothing more to do')
})
