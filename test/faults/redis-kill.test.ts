// Redis killed (SIGKILL) in the middle of the work, on a private redis-server with append-only
// persistence (fsync always), then started again: during a callback (the state consumed, the code
// exchanged, the write pending), during a refresh (CyberSource has rotated the refresh token, the
// write pending) and during a burst of lookups. Never a 500; everything recovers by itself and no
// token a page or an answer vouched for is lost.
import t, { type Test } from 'tap'
import { setImmediate, setTimeout as sleep } from 'node:timers/promises'
import { build, onboard, type Built } from '../helper.js'
import { startRedis, type TestRedis } from '../helpers/redis.js'
import { FAILURES } from '../../src/pages.js'
import {
  NO_RATE_LIMIT, admin, assertRefreshTokenAlive, callback, connectState, errorCode, forceRefresh, guarded, lookup,
  merchantStatus, pageTitle, pollStatus, simReceived, tokenRequests, type Admin, type Res
} from './helpers.js'

const AOF = ['--appendonly', 'yes', '--appendfsync', 'always']
/** How long the service may take to notice that Redis is back (ioredis reconnects with backoff up to 1 s). */
const RECOVERY_MS = 10_000
/** A guard against hung requests: the longest answer is a lookup's CYBS_TIMEOUT_MS (2 s) + 2 s. */
const HANG_MS = 10_000

async function setup (t: Test): Promise<{ b: Built, redis: TestRedis, a: Admin }> {
  const redis = await startRedis(t, AOF)
  const b = await build(t, { redis, env: NO_RATE_LIMIT, simulatorOptions: { rotateRefreshTokens: true } })
  return { b, redis, a: admin(t, b) }
}

async function recovered (t: Test, b: Built): Promise<void> {
  const ready = await pollStatus(b, '/health/ready', 200, RECOVERY_MS)
  t.equal(ready.statusCode, 200, 'readiness is 200 again by itself')
}

const isStoragePage = (res: Res): boolean => res.statusCode === 503 && pageTitle(res.body) === FAILURES.storage_unavailable.title

t.test('Redis killed during a callback, after the state was consumed and while the code is exchanged', async t => {
  for (const outageMs of [300, 6000]) {
    await t.test(`Redis back after ${outageMs} ms`, async t => {
      const { b, redis, a } = await setup(t)
      const mid = `mid_cb_${outageMs}`
      const state = await connectState(b)
      const code = b.sim.control.issueCode(mid)
      b.sim.control.setBehavior({ delayMs: 800, grantType: 'authorization_code', times: 1 })
      const pending = guarded(callback(b, code, state), HANG_MS + outageMs, 'the callback')
      t.ok(await simReceived(b.sim, 'authorization_code', 1, 5000), 'the code exchange reached CyberSource')
      await redis.stop()
      await sleep(outageMs)
      await redis.start()
      const res = await pending

      t.not(res.statusCode, 500, 'never a 500')
      t.ok(res.statusCode === 200 || isStoragePage(res), `a success or the storage_unavailable page (got ${res.statusCode} "${pageTitle(res.body) ?? ''}")`)
      if (outageMs > 5000) t.ok(isStoragePage(res), 'an outage longer than the write\'s retries: the storage_unavailable page')
      t.comment(`the callback answered ${res.statusCode}`)
      t.equal(b.sim.control.stats().exchanges, 1, 'the code was exchanged once')

      await recovered(t, b)
      if (res.statusCode === 200) {
        t.match(res.body, mid)
        const status = await merchantStatus(b, mid)
        t.equal(status.statusCode, 200, 'the merchant the page called connected is stored')
        t.equal(status.json().status, 'connected')
        await assertRefreshTokenAlive(t, b, a, mid)
      }

      // The state's consumption was persisted before the exchange: the same callback again is refused.
      const elsewhere = await guarded(callback(b, code, state, ''), HANG_MS, 'the callback from another browser')
      t.equal(elsewhere.statusCode, 401, 'the used state stays used across the restart')
      // Its own browser reloading: the first outcome again if it was kept, else the used state's 401.
      const again = await guarded(callback(b, code, state), HANG_MS, 'the repeated callback')
      t.ok(again.statusCode === res.statusCode || again.statusCode === 401, `a reload: the first answer or 401 (got ${again.statusCode})`)
      t.equal(tokenRequests(b.sim, 'authorization_code'), 1, 'no second exchange')

      // And onboarding works again.
      const next = await onboard(b, `${mid}_next`)
      t.equal(next.statusCode, 200, 'a new onboarding works')
      await assertRefreshTokenAlive(t, b, a, `${mid}_next`)
    })
  }
})

t.test('Redis killed during a forced refresh, after CyberSource rotated the refresh token', async t => {
  const { b, redis, a } = await setup(t)
  const mid = 'mid_refresh_kill'
  t.equal((await onboard(b, mid)).statusCode, 200)
  const before = await a.stored(mid)

  b.sim.control.setBehavior({ delayMs: 800, grantType: 'refresh_token', times: 1 })
  const pending = guarded(forceRefresh(b, mid), HANG_MS, 'the forced refresh')
  t.ok(await simReceived(b.sim, 'refresh_token', 1, 5000), 'the refresh reached CyberSource')
  await redis.stop()
  await sleep(500)
  await redis.start()
  const res = await pending
  t.not(res.statusCode, 500, 'never a 500')
  t.ok(res.statusCode === 200 || (res.statusCode === 503 && ['storage_unavailable', 'upstream_unavailable'].includes(String(errorCode(res)))),
    `200, or 503 storage_unavailable / upstream_unavailable (got ${res.statusCode} ${String(errorCode(res) ?? '')})`)
  t.comment(`the forced refresh answered ${res.statusCode} ${String(errorCode(res) ?? '')}`)
  t.equal(b.sim.control.stats().refreshes, 1, 'CyberSource refreshed (and invalidated the old refresh token)')

  await recovered(t, b)
  // The refreshed pair exists only in the replica's memory until its retried write lands.
  let after = before
  const deadline = Date.now() + 15_000
  while (Date.now() < deadline) {
    after = await a.stored(mid).catch(() => before)
    if (after.version !== before.version && await a.redis.exists(a.keys.lock(mid)) === 0) break
    await sleep(100)
  }
  t.ok(after.refreshToken !== before.refreshToken, 'the rotated refresh token was stored once Redis returned')
  t.ok(after.version > before.version, 'a newer version')
  t.not(after.lastRefreshedAt, null)
  t.equal(after.status, 'connected')

  const served = await guarded(lookup(b, mid), HANG_MS, 'lookup')
  t.equal(served.statusCode, 200, 'lookups work')
  await assertRefreshTokenAlive(t, b, a, mid)
})

t.test('Redis killed during a burst of lookups', async t => {
  const { b, redis, a } = await setup(t)
  const mids = Array.from({ length: 10 }, (_, i) => `mid_burst_${i}`)
  for (const mid of mids) t.equal((await onboard(b, mid)).statusCode, 200, `onboarded ${mid}`)
  const tokens = new Map<string, string>()
  for (const mid of mids) tokens.set(mid, (await a.stored(mid)).accessToken)
  // Half of them are in the replica's memory: the burst asks for those until Redis dies, then for all.
  let pool = mids.slice(0, 5)

  const counts = new Map<string, number>()
  const unexpected: string[] = []
  const burst = { on: true }
  let crashed: unknown
  const worker = async (w: number): Promise<void> => {
    for (let i = w; burst.on; i++) {
      const mid = pool[i % pool.length]
      // Every fourth request is a status read, which always goes to Redis (some are in flight at the kill).
      const status = i % 4 === 0
      const res = await guarded(status ? merchantStatus(b, mid) : lookup(b, mid), HANG_MS, `request for ${mid}`)
      const key = `${status ? 'status' : 'lookup'} ${res.statusCode} ${String(errorCode(res) ?? '')}`
      counts.set(key, (counts.get(key) ?? 0) + 1)
      const ok = res.statusCode === 200
        ? (status ? res.json().status === 'connected' : res.json().access_token === tokens.get(mid))
        : res.statusCode === 503 && errorCode(res) === 'storage_unavailable'
      if (!ok && unexpected.length < 10) unexpected.push(`${mid}: ${key}`)
      // Lookups served from memory never leave the microtask queue: let timers run.
      await setImmediate()
    }
  }
  const workers = Promise.all(Array.from({ length: 16 }, async (_, w) => await worker(w))).catch((err: unknown) => { crashed = err })
  await sleep(300)
  await redis.stop()
  pool = mids
  await sleep(1500)
  burst.on = false
  await workers
  t.equal(crashed, undefined, 'every lookup was answered')
  t.same(unexpected, [], 'each answer: the stored token (from memory) or 503 storage_unavailable')
  t.ok([...counts.keys()].every(k => !/ 5\d\d /.test(k) || / 503 storage_unavailable$/.test(k)), 'no 5xx but 503 storage_unavailable')
  t.ok((counts.get('lookup 503 storage_unavailable') ?? 0) > 0, 'merchants not in memory: 503 storage_unavailable')
  t.comment(`answers during the burst: ${JSON.stringify(Object.fromEntries(counts))}`)
  t.equal((await b.app.inject({ url: '/health/live' })).statusCode, 200, 'alive')
  t.equal((await b.app.inject({ url: '/health/ready' })).statusCode, 503, 'not ready while Redis is down')

  await redis.start()
  await recovered(t, b)
  for (const mid of mids) {
    const res = await pollStatus(b, `/internal/v1/merchants/${mid}/access-token`, 200, RECOVERY_MS, b.auth)
    t.equal(res.statusCode, 200, `${mid}: lookups are 200 again`)
    t.ok(res.statusCode === 200 && res.json().access_token === tokens.get(mid), `${mid}: the same token`)
  }
  for (const mid of mids) await assertRefreshTokenAlive(t, b, a, mid)
})
