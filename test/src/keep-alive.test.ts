// The keep-alive claimer on a real Redis and a real token store, with a moved clock and a token
// service whose forced refresh each test scripts (the simulator-backed runs are in
// test/e2e/keep-alive.test.ts): what is due is renewed, what is not is left alone, failures back
// off, rejections unschedule, the refresh_token_expiring callback is limited, work is bounded per
// replica, and a replica that dies after its claim leaves its merchants to the others.
import t, { type Test } from 'tap'
import { randomBytes } from 'node:crypto'
import { Redis } from 'ioredis'
import { startRedis } from '../helpers/redis.js'
import { HOUR, newRecord } from '../helpers/records.js'
import { createKeyRing } from '../../src/key-ring.js'
import { createRedisKeys, type RedisKeys } from '../../src/redis-keys.js'
import { createTokenStore, type MerchantMeta, type TokenStore } from '../../src/token-store.js'
import { createKeepAliveSchedule, withKeepAlive, type KeepAliveSchedule } from '../../src/keep-alive-schedule.js'
import { createKeepAlive, type KeepAlive, type KeepAliveOptions, type KeepAliveOutcome } from '../../src/keep-alive.js'
import { MerchantNotFoundError, ReauthorizationRequiredError, UpstreamUnavailableError } from '../../src/errors.js'

const DAY = 24 * HOUR
const RENEW_BEFORE_S = 30 * 24 * 3600
const RENEW_BEFORE = RENEW_BEFORE_S * 1000
const LEASE = 20_000
const silent = { info: () => {}, warn: () => {}, error: () => {} }

type Refresh = (merchantId: string) => Promise<MerchantMeta>

interface Setup {
  redis: Redis
  keys: RedisKeys
  store: TokenStore
  schedule: KeepAliveSchedule
  clock: { t: number }
  /** A replica: the claimer with its own scripted forced refresh. */
  replica: (refresh: Refresh, extra?: Partial<KeepAliveOptions>) => { keepAlive: KeepAlive, outcomes: KeepAliveOutcome[], calls: string[] }
  /** What a successful refresh does: a new expiry, written through the wrapped store. */
  renewed: Refresh
  /** Stores a merchant whose refresh token expires in `leftMs`, scheduled as its write says. */
  merchant: (id: string, leftMs: number) => Promise<void>
}

async function setup (t: Test): Promise<Setup> {
  const server = await startRedis(t)
  const redis = new Redis(server.url, { maxRetriesPerRequest: 1 })
  t.teardown(() => redis.disconnect())
  const keys = createRedisKeys('cybs:')
  const clock = { t: Date.now() }
  const raw = createTokenStore(redis, createKeyRing([{ kid: 'k1', key: randomBytes(32) }]), keys, { now: () => clock.t })
  const schedule = createKeepAliveSchedule(redis, keys, { renewBeforeSeconds: RENEW_BEFORE_S, now: () => clock.t })
  const store = withKeepAlive(raw, schedule, silent)
  const renewed: Refresh = async (id) => {
    const cur = await raw.get(id)
    if (cur === undefined) throw new MerchantNotFoundError()
    const next = { ...cur, refreshTokenExpiresAt: clock.t + 365 * DAY, lastRefreshedAt: clock.t }
    const version = await store.put(next, cur)
    return { ...next, version: version! }
  }
  return {
    redis,
    keys,
    store,
    schedule,
    clock,
    renewed,
    replica (refresh, extra = {}) {
      const outcomes: KeepAliveOutcome[] = []
      const calls: string[] = []
      const keepAlive = createKeepAlive({
        schedule,
        store,
        service: { forceRefresh: async (id) => { calls.push(id); return await refresh(id) } },
        log: silent,
        intervalMs: 20,
        leaseMs: LEASE,
        backoffBaseMs: 1000,
        backoffCapMs: 8000,
        events: { outcome: o => outcomes.push(o) },
        ...extra
      })
      return { keepAlive, outcomes, calls }
    },
    async merchant (id, leftMs) {
      await store.put(newRecord(id, { refreshTokenExpiresAt: clock.t + leftMs }))
    }
  }
}

t.test('a due merchant is renewed and rescheduled from its new expiry; one not due is left alone', async t => {
  const s = await setup(t)
  await s.merchant('due', 20 * DAY)
  await s.merchant('fresh', 300 * DAY)
  await s.schedule.add('fresh', s.clock.t) // an early entry (a write that crashed before landing)
  const { keepAlive, outcomes, calls } = s.replica(s.renewed)
  t.equal(await keepAlive.tick(), 2, 'both claimed')
  t.same(calls, ['due'], 'only the due one is refreshed')
  t.same(outcomes.sort(), ['not_due', 'refreshed'])
  const next = await s.schedule.score('due') as number
  const exp = s.clock.t + 365 * DAY
  t.ok(next >= exp - RENEW_BEFORE && next <= exp - RENEW_BEFORE * 3 / 4, 'the renewed one is due again a margin before its new expiry')
  const fresh = await s.store.getMeta('fresh')
  const again = await s.schedule.score('fresh') as number
  t.ok(again >= fresh!.refreshTokenExpiresAt - RENEW_BEFORE, 'the early one is rescheduled to its due time')
  t.equal(await keepAlive.tick(), 0, 'nothing is due any more')
})

t.test('merchants gone, disconnected or rejected are unscheduled', async t => {
  const s = await setup(t)
  await s.merchant('gone', DAY)
  await s.redis.del(s.keys.merchant('gone'), s.keys.merchantTokens('gone')) // expired away
  await s.merchant('lapsed', DAY)
  s.clock.t += 2 * DAY // its refresh token expired before keep-alive got to it
  await s.merchant('rejected', DAY)
  await s.merchant('deleted-meanwhile', DAY)
  const lapsed: string[] = []
  const { keepAlive, outcomes } = s.replica(async (id) => {
    if (id === 'rejected') throw new ReauthorizationRequiredError()
    throw new MerchantNotFoundError()
  }, { onLapsed: (id: string) => { lapsed.push(id) } })
  await s.schedule.add('gone', s.clock.t)
  t.equal(await keepAlive.tick(), 4)
  t.same(outcomes.sort(), ['reauthorization_required', 'unscheduled', 'unscheduled', 'unscheduled'])
  t.equal((await s.schedule.stats()).size, 0, 'nothing left in the schedule')
  t.same(lapsed, ['lapsed'], 'the partner hears of the merchant whose refresh token ran out, and of no other')
})

t.test('failures back off with growing, capped delays; a success clears them', async t => {
  const s = await setup(t)
  await s.merchant('m', 20 * DAY)
  let failing = true
  const { keepAlive, calls } = s.replica(async (id) => {
    if (failing) throw new UpstreamUnavailableError()
    return await s.renewed(id)
  })
  const delays: number[] = []
  for (let i = 0; i < 6; i++) {
    t.equal(await keepAlive.tick(), 1)
    const next = await s.schedule.score('m') as number
    delays.push(next - s.clock.t)
    t.equal(await keepAlive.tick(), 0, 'not retried before its delay')
    s.clock.t = next
  }
  t.same(delays, [1000, 2000, 4000, 8000, 8000, 8000], 'doubling from the base, capped')
  t.equal(calls.length, 6, 'one attempt per delay')
  failing = false
  await keepAlive.tick()
  t.equal(await s.redis.hget(s.keys.keepAliveKey('failures'), 'm'), null, 'a success forgets the failures')
  t.ok(await s.schedule.score('m') as number > s.clock.t + 300 * DAY, 'and reschedules it a year on')
})

t.test('a failure with less than 7 days left calls onExpiring, once per merchant per day', async t => {
  const s = await setup(t)
  await s.merchant('soon', 6 * DAY)
  await s.merchant('later', 20 * DAY)
  const expiring: Array<[string, number]> = []
  const { keepAlive } = s.replica(async () => { throw new UpstreamUnavailableError() }, { onExpiring: (id, at) => { expiring.push([id, at]) } })
  await keepAlive.tick()
  s.clock.t += 10_000
  await keepAlive.tick()
  const meta = await s.store.getMeta('soon')
  t.same(expiring, [['soon', meta!.refreshTokenExpiresAt]], 'one call for the one with less than 7 days left')
})

t.test('a refresh that does not move the expiry out of the margin is retried like a failure', async t => {
  const s = await setup(t)
  await s.merchant('m', 10 * DAY)
  const { keepAlive, outcomes } = s.replica(async (id) => ({ ...(await s.store.getMeta(id))! }))
  await keepAlive.tick()
  t.same(outcomes, ['not_extended'])
  t.equal(await s.schedule.score('m') as number - s.clock.t, 1000, 'after the first backoff delay, not at once')
})

t.test('each replica runs a bounded number of refreshes at a time, and drains a backlog', async t => {
  const s = await setup(t)
  for (let i = 0; i < 10; i++) await s.merchant(`m${i}`, DAY)
  let active = 0
  let peak = 0
  const claims: number[] = []
  const { keepAlive, calls } = s.replica(async (id) => {
    peak = Math.max(peak, ++active)
    await new Promise(resolve => setTimeout(resolve, 30))
    active--
    return await s.renewed(id)
  }, { concurrency: 3, events: { claimed: n => claims.push(n) } })
  keepAlive.start()
  for (let i = 0; i < 200 && calls.length < 10; i++) await new Promise(resolve => setTimeout(resolve, 20))
  await keepAlive.stop()
  t.equal(new Set(calls).size, 10, 'every due merchant renewed')
  t.equal(calls.length, 10, 'each once')
  t.equal(peak, 3, 'never more than the bound at a time')
  t.ok(claims.every(n => n <= 3), 'claims never take more than the free slots')
})

t.test('stop() waits for the renewals under way', async t => {
  const s = await setup(t)
  await s.merchant('m', DAY)
  let finished = false
  const { keepAlive } = s.replica(async (id) => {
    await new Promise(resolve => setTimeout(resolve, 200))
    finished = true
    return await s.renewed(id)
  })
  keepAlive.start()
  for (let i = 0; i < 100 && (await s.schedule.stats()).due > 0; i++) await new Promise(resolve => setTimeout(resolve, 10))
  await keepAlive.stop()
  t.equal(finished, true, 'the refresh finished before stop() resolved')
  t.ok(await s.schedule.score('m') as number > s.clock.t + 300 * DAY, 'and its result is scheduled')
})

t.test('a replica that dies after its claim leaves its merchants to the others after the lease', async t => {
  const s = await setup(t)
  for (let i = 0; i < 6; i++) await s.merchant(`m${i}`, DAY)
  const hung: Array<() => void> = []
  // The dead replica: its refreshes never return (it was killed after its claim, mid-batch).
  const claimedByDead = new Promise<number>(resolve => {
    const dead = s.replica(async () => await new Promise<never>((_resolve, reject) => { hung.push(() => reject(new Error('killed'))) }), { events: { claimed: resolve } })
    dead.keepAlive.tick().catch(() => {})
    t.teardown(async () => { for (const kill of hung) kill(); await dead.keepAlive.stop() })
  })
  t.equal(await claimedByDead, 4, 'the dead replica had claimed four')
  const alive = s.replica(s.renewed)
  t.equal(await alive.keepAlive.tick(), 2, 'the others are taken at once')
  t.equal(await alive.keepAlive.tick(), 0, 'the dead replica\'s are leased')
  s.clock.t += LEASE + 1
  t.equal(await alive.keepAlive.tick(), 4, 'after the lease they come back')
  t.same(alive.calls.sort(), ['m0', 'm1', 'm2', 'm3', 'm4', 'm5'], 'every merchant renewed, each once')
})
