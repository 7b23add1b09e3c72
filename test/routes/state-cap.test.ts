// The cap on onboarding states (STATE_MAX_PER_CLIENT, STATE_MAX_TOTAL per STATE_TTL_SECONDS): a
// flood of /oauth/connect, from many client buckets or from one, leaves at most the caps' worth of
// states in Redis, whatever the number of requests; the refused get the 429 page with Retry-After
// and are counted in metrics; callbacks are never refused by it. Two instances share one Redis.
import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import { build, secrets, startSimulator, type Built } from '../helper.js'
import { scanKeys, startRedis } from '../helpers/redis.js'
import { SLICES } from '../../src/state-quota.js'

const STATE_TTL_SECONDS = 600

interface Res { statusCode: number, body: string, headers: Record<string, unknown> }

async function pair (t: Test, env: Record<string, string>): Promise<{ a: Built, b: Built, admin: Redis, prefix: string }> {
  const redis = await startRedis(t)
  const s = secrets()
  const sim = await startSimulator(t, { clientSecret: s.clientSecret })
  // No rate limit in the way: the state cap alone is under test.
  const all = { RATE_LIMIT_MAX: '1000000', STATE_TTL_SECONDS: String(STATE_TTL_SECONDS), ...env }
  const a = await build(t, { redis, simulator: sim, secrets: s, env: all })
  const b = await build(t, { redis, simulator: sim, secrets: s, env: all })
  const admin = new Redis(redis.url, { maxRetriesPerRequest: 1 })
  t.teardown(() => admin.disconnect())
  return { a, b, admin, prefix: a.config.redisKeyPrefix }
}

/** GET /oauth/connect from each address, all at once, alternating between the instances. */
async function flood (apps: Built[], addresses: string[], url = '/oauth/connect'): Promise<Res[]> {
  return await Promise.all(addresses.map(async (remoteAddress, i) => await apps[i % apps.length].app.inject({ method: 'GET', url, remoteAddress })))
}

/** Keys under the prefix by kind: state, state-quota, rate, other. */
async function keyCounts (admin: Redis, prefix: string): Promise<Record<string, number>> {
  const counts: Record<string, number> = { state: 0, 'state-quota': 0, rate: 0, other: 0 }
  for (const key of await scanKeys(admin, `${prefix}*`)) {
    const kind = /^([a-z-]+):/.exec(key.slice(prefix.length))?.[1] ?? 'other'
    counts[kind in counts ? kind : 'other']++
  }
  return counts
}

async function refused (apps: Built[]): Promise<{ client: number, total: number }> {
  const sum = { client: 0, total: 0 }
  for (const app of apps) {
    const text = (await app.app.inject({ method: 'GET', url: '/metrics' })).body
    for (const scope of ['client', 'total'] as const) {
      const m = new RegExp(`^cybs_onboarding_states_refused_total\\{scope="${scope}"\\} (\\d+)$`, 'm').exec(text)
      sum[scope] += m === null ? 0 : Number(m[1])
    }
  }
  return sum
}

const usedMemory = async (admin: Redis): Promise<number> => Number(/used_memory:(\d+)/.exec(await admin.info('memory'))?.[1])

function assertRefusedPage (t: Test, res: Res, where: string): void {
  t.equal(res.statusCode, 429, `${where}: 429`)
  t.match(String(res.headers['content-type']), /^text\/html/, `${where}: the page`)
  t.match(res.body, /Too many attempts/, `${where}: says why`)
  const retryAfter = Number(res.headers['retry-after'])
  t.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= STATE_TTL_SECONDS * (SLICES + 1) / SLICES, `${where}: Retry-After ${String(res.headers['retry-after'])}`)
  t.equal(res.headers.location, undefined, `${where}: no redirect to CyberSource`)
  t.equal(res.headers['set-cookie'], undefined, `${where}: no binding cookie`)
}

const ipv4s = (from: number, n: number): string[] => Array.from({ length: n }, (_, i) => `198.18.${(from + i) >> 8}.${(from + i) & 0xff}`)
const count = (list: Res[], status: number): number => list.filter(r => r.statusCode === status).length

t.test('many clients: the total cap bounds the states, however many requests and addresses', async t => {
  const TOTAL = 50
  const { a, b, admin, prefix } = await pair(t, { STATE_MAX_TOTAL: String(TOTAL), STATE_MAX_PER_CLIENT: '5' })
  const apps = [a, b]

  const first = await flood(apps, ipv4s(0, 200))
  t.equal(count(first, 302), TOTAL, `exactly ${TOTAL} onboardings started`)
  t.equal(count(first, 429), 200 - TOTAL, 'the rest refused')
  assertRefusedPage(t, first.find(r => r.statusCode === 429)!, 'a refused start')
  t.same(await refused(apps), { client: 0, total: 200 - TOTAL }, 'counted in metrics as refused by the total')
  const afterFirst = await keyCounts(admin, prefix)
  t.equal(afterFirst.state, TOTAL, 'states in Redis: the cap')
  t.equal(afterFirst['state-quota'], TOTAL + 1, 'one counter per admitted client, and the total')
  const memoryAfterFirst = await usedMemory(admin)

  // Ten times more, from the same addresses: nothing more is stored.
  for (let round = 0; round < 10; round++) {
    const again = await flood(apps, ipv4s(0, 200))
    if (count(again, 429) !== 200) t.fail(`round ${round}: ${count(again, 302)} admitted`)
  }
  t.same(await keyCounts(admin, prefix), afterFirst, 'the same keys after 2,000 more requests')
  const growth = await usedMemory(admin) - memoryAfterFirst
  t.ok(growth < 64 * 1024, `Redis memory did not grow with the requests (${growth} bytes)`)

  // From 1,000 new addresses: no state and no quota counter; only the rate-limit counters, one
  // per address, which expire with RATE_LIMIT_WINDOW_SECONDS.
  const fresh = await flood(apps, ipv4s(1000, 1000))
  t.equal(count(fresh, 429), 1000)
  t.same(await keyCounts(admin, prefix), { ...afterFirst, rate: afterFirst.rate + 1000 }, 'new clients refused by the total leave no quota counter')
  // Everything the requests made expires (the keep-alive schedule's marker is the app's own).
  for (const key of await scanKeys(admin, `${prefix}*`)) {
    if (key.startsWith(`${prefix}{keepalive}:`)) continue
    if (await admin.pttl(key) <= 0) t.fail(`${key} has no TTL`)
  }
  t.same(await refused(apps), { client: 0, total: 150 + 2000 + 1000 })
})

t.test('one client: its own cap, IPv6 as one /64; others and callbacks are not refused', async t => {
  const PER_CLIENT = 5
  const { a, b, admin, prefix } = await pair(t, { STATE_MAX_TOTAL: '1000', STATE_MAX_PER_CLIENT: String(PER_CLIENT) })
  const apps = [a, b]

  const one = await flood(apps, Array.from({ length: 60 }, () => '203.0.113.5'))
  t.equal(count(one, 302), PER_CLIENT, 'one IPv4 address: the per-client cap')
  t.equal(count(one, 429), 60 - PER_CLIENT)
  assertRefusedPage(t, one.find(r => r.statusCode === 429)!, 'a refused start')

  // 60 addresses of one /64 are one client.
  const net = await flood(apps, Array.from({ length: 60 }, (_, i) => `2001:db8:7:1:${i.toString(16)}::${(i * 7).toString(16)}`))
  t.equal(count(net, 302), PER_CLIENT, 'one /64: the per-client cap')
  t.equal(count(net, 302) + count(net, 429), 60)

  t.same(await refused(apps), { client: 110, total: 0 }, 'counted in metrics as refused per client')
  t.equal((await keyCounts(admin, prefix)).state, 2 * PER_CLIENT, 'states in Redis: the cap of each client')

  t.equal((await a.app.inject({ method: 'GET', url: '/oauth/connect', remoteAddress: '2001:db8:7:2::1' })).statusCode, 302, 'the next /64 starts')
  t.equal((await a.app.inject({ method: 'GET', url: '/oauth/connect', remoteAddress: '203.0.113.6' })).statusCode, 302, 'another IPv4 address starts')
  // A real onboarding link counts as a start; a visit of an unknown one starts nothing and is not counted.
  const link = (await b.app.inject({ method: 'POST', url: '/internal/v1/onboarding-links', headers: b.auth })).json() as { url: string }
  assertRefusedPage(t, await b.app.inject({ method: 'GET', url: new URL(link.url).pathname, remoteAddress: '203.0.113.5' }), 'an onboarding link visit of the capped client')
  const refusedBefore = await refused(apps)
  t.equal((await b.app.inject({ method: 'GET', url: '/oauth/links/onb_AAAAAAAAAAAAAAAAAAAAAA/key_cap', remoteAddress: '203.0.113.5' })).statusCode, 404, 'an unknown link: 404, not 429')
  t.same(await refused(apps), refusedBefore, 'and not counted against the caps')

  // The capped client's browser comes back from CyberSource: its callback is not refused.
  const started = one.find(r => r.statusCode === 302)!
  const state = new URL(String(started.headers.location)).searchParams.get('state') ?? ''
  const code = a.sim.control.issueCode('mid_cap')
  const cookie = String(started.headers['set-cookie'] ?? '').split(';')[0]
  const callback = await b.app.inject({ method: 'GET', url: `/oauth/callback?code=${encodeURIComponent(code)}&state=${encodeURIComponent(state)}`, remoteAddress: '203.0.113.5', headers: cookie === '' ? {} : { cookie } })
  t.equal(callback.statusCode, 200, 'the callback completes the onboarding')
  t.match(callback.body, /mid_cap/)
})

t.test('the cap is counted before the route does anything: an invalid request is not counted', async t => {
  const { a, b } = await pair(t, { STATE_MAX_TOTAL: '1000', STATE_MAX_PER_CLIENT: '2' })
  for (let i = 0; i < 5; i++) {
    const res = await a.app.inject({ method: 'GET', url: '/oauth/connect?merchant_id=%20bad', remoteAddress: '203.0.113.9' })
    t.equal(res.statusCode, 400, `invalid request ${i + 1}: 400`)
  }
  const ok = await flood([a, b], ['203.0.113.9', '203.0.113.9', '203.0.113.9'])
  t.same(ok.map(r => r.statusCode).sort(), [302, 302, 429], 'the client still has its whole cap')
})
