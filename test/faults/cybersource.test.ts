// CyberSource answering badly (simulator switches): a body that is not JSON, a 10 MB body, a token
// without a merchant_id claim, an HTML 502, a dropped connection, and a refresh answer naming
// another merchant. Each ends in a typed outcome (the callback's exchange_failed or
// upstream_unavailable page; 503 upstream_unavailable for a refresh), nothing is stored, no
// merchant is marked, and the process's memory does not grow with the size of the bodies.
import t, { type Test } from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { build, onboard, type Built } from '../helper.js'
import { scanKeys } from '../helpers/redis.js'
import { FAILURES } from '../../src/pages.js'
import { decodeJwtPayload } from '../../src/cybersource/jwt.js'
import { FAILURE_HOLD_MS } from '../../src/refresh-policy.js'
import { HUGE_BODY_BYTES, type Fault } from '../../src/simulator/app.js'
import {
  NO_RATE_LIMIT, admin, assertRefreshTokenAlive, callback, connectState, errorCode, fingerprint, forceRefresh, guarded, lookup,
  merchantStatus, pageTitle, type Admin
} from './helpers.js'

/** Past MIN_VALIDITY before expiry of a 15-minute token: a lookup must refresh first. */
const NEARLY_EXPIRED_MS = 870_000
const HANG_MS = 15_000

const CASES: Array<{ fault: Fault, reason: 'exchange_failed' | 'upstream_unavailable' }> = [
  { fault: 'garbage', reason: 'exchange_failed' },
  { fault: 'huge', reason: 'exchange_failed' },
  { fault: 'no_merchant_id', reason: 'exchange_failed' },
  { fault: 'error_502_html', reason: 'upstream_unavailable' },
  { fault: 'drop', reason: 'upstream_unavailable' }
]

interface Env { b: Built, a: Admin, advance: (ms: number) => void }

async function setup (t: Test, rotateRefreshTokens = true): Promise<Env> {
  let offset = 0
  const b = await build(t, { env: NO_RATE_LIMIT, now: () => Date.now() + offset, simulatorOptions: { rotateRefreshTokens } })
  return { b, a: admin(t, b), advance: (ms) => { offset += ms } }
}

async function merchantKeys (a: Admin): Promise<string[]> {
  return await scanKeys(a.redis, a.keys.merchantPattern)
}

t.test('the callback: each fault is its typed failure page, nothing stored', async t => {
  const { b, a } = await setup(t)
  for (const { fault, reason } of CASES) {
    const mid = `mid_cb_${fault}`
    b.sim.control.setBehavior({ fault, grantType: 'authorization_code' })
    const res = await guarded(callback(b, b.sim.control.issueCode(mid), await connectState(b)), HANG_MS, `callback (${fault})`)
    t.equal(res.statusCode, FAILURES[reason].status, `${fault}: ${FAILURES[reason].status}`)
    t.equal(pageTitle(res.body), FAILURES[reason].title, `${fault}: the ${reason} page`)
    t.equal((await merchantStatus(b, mid)).statusCode, 404, `${fault}: nothing stored`)
  }
  t.same(await merchantKeys(a), [], 'no merchant record at all')
  t.equal(b.sim.control.stats().exchanges, 1, 'only no_merchant_id\'s exchange was real, and its tokens were dropped')

  b.sim.control.setBehavior({})
  t.equal((await onboard(b, 'mid_cb_after')).statusCode, 200, 'a clean exchange still works')
})

t.test('a refresh: each fault is 503 upstream_unavailable, the merchant keeps its tokens and is not marked', async t => {
  // Without rotation, as CyberSource does: no_merchant_id answers a real refresh, whose new pair is
  // dropped (a rotating simulator would have invalidated the stored refresh token with it).
  const { b, a, advance } = await setup(t, false)
  for (const { fault } of CASES) {
    await t.test(fault, async t => {
      const mid = `mid_rf_${fault}`
      t.equal((await onboard(b, mid)).statusCode, 200)
      const before = await a.stored(mid)
      b.sim.control.setBehavior({ fault, grantType: 'refresh_token' })

      const forced = await guarded(forceRefresh(b, mid), HANG_MS, 'forced refresh')
      t.equal(forced.statusCode, 503, 'forced refresh: 503')
      t.equal(errorCode(forced), 'upstream_unavailable')
      t.same(fingerprint(await a.store.get(mid)), fingerprint(before), 'the stored record is untouched')

      // A lookup whose token is nearly expired must refresh: the same fault, the same answer.
      advance(NEARLY_EXPIRED_MS)
      const looked = await guarded(lookup(b, mid), HANG_MS, 'lookup')
      t.equal(looked.statusCode, 503, 'blocking lookup: 503')
      t.equal(errorCode(looked), 'upstream_unavailable')
      t.same(fingerprint(await a.store.get(mid)), fingerprint(before), 'still untouched')
      const status = await merchantStatus(b, mid)
      t.equal(status.json().status, 'connected', 'not marked')
      t.equal(status.json().last_refreshed_at, null)

      b.sim.control.setBehavior({})
      await sleep(FAILURE_HOLD_MS + 100)
      const healed = await guarded(lookup(b, mid), HANG_MS, 'lookup after the fault')
      t.equal(healed.statusCode, 200, 'a lookup refreshes once CyberSource is well again')
      t.ok(healed.json().access_token !== before.accessToken, 'with a new token')
      await assertRefreshTokenAlive(t, b, a, mid)
      advance(-NEARLY_EXPIRED_MS)
    })
  }
})

t.test('a refresh answer naming another merchant: 503, nothing stored, the merchant keeps its old tokens', async t => {
  const { b, a, advance } = await setup(t)
  for (const mid of ['mid_victim', 'mid_other']) t.equal((await onboard(b, mid)).statusCode, 200)
  const victim = await a.stored('mid_victim')
  const other = await a.stored('mid_other')

  for (const claim of ['mid_other', 'mid_unknown']) {
    b.sim.control.setBehavior({ fault: 'wrong_merchant', merchantId: claim, grantType: 'refresh_token' })
    const forced = await guarded(forceRefresh(b, 'mid_victim'), HANG_MS, 'forced refresh')
    t.equal(forced.statusCode, 503, `claim ${claim}: forced refresh 503`)
    t.equal(errorCode(forced), 'upstream_unavailable')
  }
  t.same(fingerprint(await a.store.get('mid_victim')), fingerprint(victim), 'the merchant\'s record is untouched')
  t.same(fingerprint(await a.store.get('mid_other')), fingerprint(other), 'the other merchant\'s too')
  t.same((await merchantKeys(a)).sort(), [a.keys.merchant('mid_other'), a.keys.merchant('mid_victim')].sort(), 'no record for the unknown claim')

  const served = await lookup(b, 'mid_victim')
  t.equal(served.statusCode, 200)
  t.ok(served.json().access_token === victim.accessToken, 'the old access token is still served')
  t.equal((await merchantStatus(b, 'mid_victim')).json().status, 'connected', 'connected')

  advance(NEARLY_EXPIRED_MS)
  await sleep(FAILURE_HOLD_MS + 100)
  b.sim.control.setBehavior({ fault: 'wrong_merchant', merchantId: 'mid_other', grantType: 'refresh_token' })
  const looked = await guarded(lookup(b, 'mid_victim'), HANG_MS, 'blocking lookup')
  t.equal(looked.statusCode, 503, 'a lookup that must refresh: 503')
  t.equal(errorCode(looked), 'upstream_unavailable')
  t.same(fingerprint(await a.store.get('mid_victim')), fingerprint(victim), 'still untouched')
  advance(-NEARLY_EXPIRED_MS)

  b.sim.control.setBehavior({})
  await assertRefreshTokenAlive(t, b, a, 'mid_victim')
  const mine = await lookup(b, 'mid_victim')
  t.equal(decodeJwtPayload(String(mine.json().access_token))?.merchant_id, 'mid_victim', 'its own token again')
  const theirs = await lookup(b, 'mid_other')
  t.ok(theirs.json().access_token === other.accessToken, 'the other merchant is served its own token')
})

t.test('10 MB answers: memory stays bounded (the body is read up to a cap, then dropped)', async t => {
  const { b, a } = await setup(t)
  const gc = (globalThis as { gc?: () => void }).gc
  const mid = 'mid_huge'
  t.equal((await onboard(b, mid)).statusCode, 200)
  const before = await a.stored(mid)
  b.sim.control.setBehavior({ fault: 'huge' })
  // One of each first: the simulator's shared body and the code paths are allocated once.
  await callback(b, b.sim.control.issueCode('mid_huge_cb'), await connectState(b))
  await forceRefresh(b, mid)
  gc?.()
  await sleep(200)
  const base = process.memoryUsage.rss()
  // The peak, not the end: without a forced collection, garbage would hide in (or vanish from) a
  // single reading, while bodies kept even briefly would raise the peak.
  let peak = base
  const sampler = setInterval(() => { peak = Math.max(peak, process.memoryUsage.rss()) }, 20)
  t.teardown(() => clearInterval(sampler))

  const N = 20
  for (let i = 0; i < N; i++) {
    const cb = await guarded(callback(b, b.sim.control.issueCode(`mid_huge_cb_${i}`), await connectState(b)), HANG_MS, 'callback')
    t.equal(cb.statusCode, 502, 'exchange_failed')
    const rf = await guarded(forceRefresh(b, mid), HANG_MS, 'forced refresh')
    t.equal(rf.statusCode, 503, 'upstream_unavailable')
  }
  clearInterval(sampler)
  gc?.()
  const end = process.memoryUsage.rss()
  peak = Math.max(peak, end)
  const mb = (n: number): string => `${(n / 1024 / 1024).toFixed(1)} MB`
  t.comment(`RSS over ${2 * N} answers of ${mb(HUGE_BODY_BYTES)}: peak +${mb(peak - base)}, end ${mb(end - base)}${gc === undefined ? ' (no forced GC)' : ''}`)
  // Reading each body whole would allocate several times its size per answer: N * 10 MB at least.
  t.ok(peak - base < N * HUGE_BODY_BYTES / 2, `RSS never rose by more than half of ${N} bodies (peak +${mb(peak - base)})`)
  t.same(fingerprint(await a.store.get(mid)), fingerprint(before), 'nothing stored')
  t.same(await merchantKeys(a), [a.keys.merchant(mid)], 'no other record')
})
