// Rate limiting of the browser-facing /oauth routes: one Redis-backed counter shared by every
// replica (two app instances on one Redis here), per client bucket (an IPv4 address, an IPv6 /64)
// and kind of route (starting an onboarding, or the callback), not applied to the internal API or
// the operations routes, and out of the way when Redis is down (the route answers its 503). The
// bucket is request.ip as TRUST_PROXY reads it: an X-Forwarded-For entry that no trusted proxy
// wrote never chooses it.
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import { build, secrets, startSimulator, type Built } from '../helper.js'
import { scanKeys, startRedis, type TestRedis } from '../helpers/redis.js'

const MAX = 5
const WINDOW_SECONDS = 60
/** Only a guard against a hung request, not a performance assertion. */
const HANG_GUARD_MS = 3000

interface Res { statusCode: number, body: string, headers: Record<string, unknown>, json: () => any }

async function pair (t: Test): Promise<{ a: Built, b: Built, redis: TestRedis }> {
  const redis = await startRedis(t)
  const s = secrets()
  const sim = await startSimulator(t, { clientSecret: s.clientSecret })
  const env = { RATE_LIMIT_MAX: String(MAX), RATE_LIMIT_WINDOW_SECONDS: String(WINDOW_SECONDS) }
  const a = await build(t, { redis, simulator: sim, secrets: s, env })
  const b = await build(t, { redis, simulator: sim, secrets: s, env })
  return { a, b, redis }
}

async function get (app: Built, url: string, opts: { headers?: Record<string, string>, remoteAddress?: string } = {}): Promise<Res> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([
      app.app.inject({ method: 'GET', url, ...opts }),
      new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`GET ${url}: no answer within ${HANG_GUARD_MS} ms`)), HANG_GUARD_MS) })
    ])
  } finally {
    clearTimeout(timer)
  }
}

function assertLimited (t: Test, res: Res, where: string): void {
  t.equal(res.statusCode, 429, `${where}: 429`)
  const retryAfter = String(res.headers['retry-after'])
  t.match(retryAfter, /^\d+$/, `${where}: Retry-After in seconds (${retryAfter})`)
  t.ok(Number(retryAfter) >= 1 && Number(retryAfter) <= WINDOW_SECONDS, `${where}: Retry-After within the window`)
  t.equal(res.headers.location, undefined, `${where}: no redirect to CyberSource`)
  // Browser-facing routes answer errors with an HTML page (or a redirect), the internal
  // API with JSON.
  t.match(String(res.headers['content-type']), /^text\/html/, `${where}: an HTML page for the browser`)
}

t.test('the limit is shared by two instances on one Redis; the 6th request gets 429 with Retry-After', async t => {
  const { a, b, redis } = await pair(t)
  const instances = [a, b, a, b, a]
  for (const [i, app] of instances.entries()) {
    const res = await get(app, '/oauth/connect')
    t.equal(res.statusCode, 302, `request ${i + 1} on instance ${app === a ? 'a' : 'b'}: 302`)
    t.equal(res.headers['x-ratelimit-limit'], String(MAX))
    t.equal(res.headers['x-ratelimit-remaining'], String(MAX - i - 1), 'the count includes the other instance\'s requests')
  }
  assertLimited(t, await get(b, '/oauth/connect'), '6th on b')
  assertLimited(t, await get(a, '/oauth/connect'), '7th on a')
  assertLimited(t, await get(a, '/oauth/connect?merchant_id=mid_rl'), 'with a merchant_id')
  assertLimited(t, await get(b, '/oauth/links/lnk_rl/key_rl'), 'an onboarding link visit (it starts an onboarding too)')

  // Callbacks count in a bucket of their own: the flooded starts leave them alone.
  const state = randomBytes(32).toString('base64url')
  for (const [i, app] of instances.entries()) {
    const res = await get(app, `/oauth/callback?code=c&state=${state}`)
    t.not(res.statusCode, 429, `callback ${i + 1} from the same client is not throttled (${res.statusCode})`)
    t.equal(res.headers['x-ratelimit-remaining'], String(MAX - i - 1), 'counted on its own')
  }
  assertLimited(t, await get(b, `/oauth/callback?code=c&state=${state}`), 'the callback over its own limit')
  t.equal(a.sim.control.stats().exchanges, 0, 'the limited callback exchanged nothing')

  // Per client address: another client is not affected.
  const other = await get(a, '/oauth/connect', { remoteAddress: '127.0.0.2' })
  t.equal(other.statusCode, 302, 'another client address is not limited')

  // Not the internal API, nor health or metrics, on either instance.
  for (const app of [a, b]) {
    for (let i = 0; i < MAX * 2; i++) {
      const res = await get(app, '/internal/v1/merchants', { headers: app.auth })
      if (res.statusCode !== 200) {
        t.fail(`internal call ${i + 1}: ${res.statusCode} ${res.body}`)
        break
      }
      if (i === 0) t.equal(res.headers['x-ratelimit-limit'], undefined, 'no rate-limit headers on the internal API')
    }
    t.pass('the internal API answered every call')
    t.equal((await get(app, '/internal/v1/merchants/mid_rl/access-token', { headers: app.auth })).statusCode, 404)
    t.equal((await get(app, '/health/ready')).statusCode, 200)
    t.equal((await get(app, '/health/live')).statusCode, 200)
    t.equal((await get(app, '/metrics')).statusCode, 200)
  }

  // The counter lives in Redis under REDIS_KEY_PREFIX.
  const admin = new Redis(redis.url, { maxRetriesPerRequest: 1 })
  t.teardown(() => admin.disconnect())
  const keys = await admin.keys('*')
  t.same(keys.filter(k => !k.startsWith(a.config.redisKeyPrefix)), [], 'every key under REDIS_KEY_PREFIX')
  const rateKeys = keys.filter(k => k.startsWith(`${a.config.redisKeyPrefix}rate:`))
  t.same(rateKeys.map(k => k.slice(`${a.config.redisKeyPrefix}rate:`.length)).sort(), ['other:127.0.0.1', 'start:127.0.0.1', 'start:127.0.0.2'],
    'one counter per kind of route and client bucket')
  const pttl = await admin.pttl(rateKeys[0])
  t.ok(pttl > 0 && pttl <= WINDOW_SECONDS * 1000, 'the counter expires with the window')
})

t.test('Redis down: the limiter does not block (skipOnError), the route answers its own 503 page', async t => {
  const { a, b, redis } = await pair(t)
  for (let i = 0; i < MAX; i++) t.equal((await get(i % 2 === 0 ? a : b, '/oauth/connect')).statusCode, 302)
  assertLimited(t, await get(a, '/oauth/connect'), 'limit reached before the outage')

  await redis.stop()
  try {
    for (const app of [a, b, a, b, a, b, a]) {
      const res = await get(app, '/oauth/connect')
      t.equal(res.statusCode, 503, `${app === a ? 'a' : 'b'}: 503, not 429`)
      t.match(String(res.headers['content-type']), /^text\/html/, 'the route\'s own page')
      t.match(res.body, /Temporarily unavailable/)
      t.equal(res.headers['retry-after'], undefined)
      t.equal(res.headers.location, undefined)
    }
    // A well-formed state, so that the callback has to ask Redis for it.
    const callback = await get(b, `/oauth/callback?code=c&state=${randomBytes(32).toString('base64url')}`)
    t.equal(callback.statusCode, 503, 'the callback too')
    t.match(callback.body, /Temporarily unavailable/)
    t.equal(a.sim.control.stats().exchanges, 0)
    t.equal((await get(a, '/health/live')).statusCode, 200, 'still alive')
  } finally {
    // Redis comes back empty.
    await redis.start()
  }

  // Back (empty): the counting starts again.
  let res: Res
  const deadline = Date.now() + 10_000
  for (;;) {
    res = await get(a, '/oauth/connect')
    if (res.statusCode === 302 || Date.now() > deadline) break
    await sleep(100)
  }
  t.equal(res.statusCode, 302, 'connect works again once Redis is back')
})

/** The rate-limit counters under an instance's prefix, as `kind:bucket`. */
async function counters (admin: Redis, prefix: string): Promise<string[]> {
  return (await scanKeys(admin, `${prefix}rate:*`)).map(k => k.slice(`${prefix}rate:`.length)).sort()
}

t.test('X-Forwarded-For cannot choose the bucket, under every TRUST_PROXY form', async t => {
  const redis = await startRedis(t)
  const s = secrets()
  const sim = await startSimulator(t, { clientSecret: s.clientSecret })
  const admin = new Redis(redis.url, { maxRetriesPerRequest: 1 })
  t.teardown(() => admin.disconnect())
  let n = 0
  const instance = async (trustProxy: string): Promise<{ app: Built, prefix: string }> => {
    const prefix = `xff${++n}:`
    const env = { RATE_LIMIT_MAX: String(MAX), RATE_LIMIT_WINDOW_SECONDS: String(WINDOW_SECONDS), TRUST_PROXY: trustProxy, REDIS_KEY_PREFIX: prefix }
    return { app: await build(t, { redis, simulator: sim, secrets: s, env }), prefix }
  }
  /**
   * MAX + 1 connects from `peer`, each with another client-chosen X-Forwarded-For (made by
   * `forwarded`): all count in `bucket`, so the last is throttled.
   */
  const flood = async (t: Test, app: Built, peer: string, forwarded: (forged: string) => string): Promise<void> => {
    for (let i = 0; i < MAX; i++) {
      const res = await get(app, '/oauth/connect', { remoteAddress: peer, headers: { 'x-forwarded-for': forwarded(`203.0.113.${i + 1}`) } })
      t.equal(res.statusCode, 302, `request ${i + 1}: 302`)
    }
    assertLimited(t, await get(app, '/oauth/connect', { remoteAddress: peer, headers: { 'x-forwarded-for': forwarded('203.0.113.99') } }), `${MAX + 1}th with yet another forged entry`)
  }

  await t.test('false: X-Forwarded-For is ignored; the peer is the client', async t => {
    const { app, prefix } = await instance('false')
    await flood(t, app, '192.0.2.10', forged => forged)
    t.equal((await get(app, '/oauth/connect', { remoteAddress: '192.0.2.10', headers: { 'x-forwarded-for': '198.51.100.1, 198.51.100.2' } })).statusCode, 429, 'a list of entries is ignored too')
    t.equal((await get(app, '/oauth/connect', { remoteAddress: '192.0.2.11', headers: { 'x-forwarded-for': '192.0.2.10' } })).statusCode, 302, 'another peer naming the throttled one is not throttled')
    t.same(await counters(admin, prefix), ['start:192.0.2.10', 'start:192.0.2.11'])
  })

  for (const form of ['true', '1']) {
    await t.test(`${form}: only the entry the nearest proxy appended counts`, async t => {
      const { app, prefix } = await instance(form)
      // The proxy (10.0.0.1) appends the address it saw to what the client sent.
      await flood(t, app, '10.0.0.1', forged => `${forged}, 198.51.100.7`)
      t.equal((await get(app, '/oauth/connect', { remoteAddress: '10.0.0.1', headers: { 'x-forwarded-for': '198.51.100.7, 198.51.100.8' } })).statusCode, 302,
        'a client naming another address to the left gets its own bucket, not the one it named')
      t.equal((await get(app, '/oauth/connect', { remoteAddress: '10.0.0.1', headers: { 'x-forwarded-for': '198.51.100.9' } })).statusCode, 302, 'another client')
      t.same(await counters(admin, prefix), ['start:198.51.100.7', 'start:198.51.100.8', 'start:198.51.100.9'], 'no bucket of a forged entry')
    })
  }

  await t.test('2: the entry the second proxy appended counts', async t => {
    const { app, prefix } = await instance('2')
    await flood(t, app, '10.0.0.1', forged => `${forged}, 198.51.100.7, 10.0.0.2`)
    t.same(await counters(admin, prefix), ['start:198.51.100.7'])
  })

  await t.test('a CIDR list: entries of trusted proxies are skipped, and only those', async t => {
    const { app, prefix } = await instance('10.0.0.0/8, fd00::/8')
    // One or two trusted proxies (the peer, and 10.9.9.9 in the list), IPv4 or IPv6.
    const chains: Array<[string, (forged: string) => string]> = [
      ['10.0.0.1', forged => `${forged}, 198.51.100.7`],
      ['fd00::1', forged => `${forged}, 198.51.100.7, 10.9.9.9`],
      ['10.0.0.1', forged => `${forged}, 198.51.100.7, fd00::2`]
    ]
    for (let i = 0; i < MAX; i++) {
      const [peer, forwarded] = chains[i % chains.length]
      const res = await get(app, '/oauth/connect', { remoteAddress: peer, headers: { 'x-forwarded-for': forwarded(`203.0.113.${i + 1}`) } })
      t.equal(res.statusCode, 302, `request ${i + 1} through ${peer}: 302`)
    }
    // A forged entry inside a trusted range is never reached: the client's own address, appended
    // by the proxy, stops the walk.
    assertLimited(t, await get(app, '/oauth/connect', { remoteAddress: '10.0.0.1', headers: { 'x-forwarded-for': '10.5.5.5, 198.51.100.7' } }), 'a forged trusted-range entry')
    // A peer outside the list is the client itself, whatever it forwards.
    const direct = await get(app, '/oauth/connect', { remoteAddress: '192.0.2.20', headers: { 'x-forwarded-for': '198.51.100.50' } })
    t.equal(direct.statusCode, 302)
    t.same(await counters(admin, prefix), ['start:192.0.2.20', 'start:198.51.100.7'], 'the client behind the proxies, and the untrusted peer')
  })
})

t.test('IPv6: one bucket per /64; IPv4-mapped addresses are their IPv4', async t => {
  const redis = await startRedis(t)
  const env = { RATE_LIMIT_MAX: String(MAX), RATE_LIMIT_WINDOW_SECONDS: String(WINDOW_SECONDS) }
  const app = await build(t, { redis, env })
  const prefix = app.config.redisKeyPrefix
  const sameNet = ['2001:db8:0:1::1', '2001:db8:0:1:ffff:ffff:ffff:ffff', '2001:DB8:0:1::abcd', '2001:0db8:0000:0001:1234::', '2001:db8:0:1::2']
  for (const [i, peer] of sameNet.entries()) t.equal((await get(app, '/oauth/connect', { remoteAddress: peer })).statusCode, 302, `${peer}: request ${i + 1}`)
  assertLimited(t, await get(app, '/oauth/connect', { remoteAddress: '2001:db8:0:1:5:6:7:8' }), 'one more address of that /64')
  t.equal((await get(app, '/oauth/connect', { remoteAddress: '2001:db8:0:2::1' })).statusCode, 302, 'the next /64 is not throttled')
  t.equal((await get(app, '/oauth/connect', { remoteAddress: '198.51.100.3' })).statusCode, 302)
  t.equal((await get(app, '/oauth/connect', { remoteAddress: '::ffff:198.51.100.3' })).statusCode, 302)
  const admin = new Redis(redis.url, { maxRetriesPerRequest: 1 })
  t.teardown(() => admin.disconnect())
  t.same(await counters(admin, prefix), ['start:198.51.100.3', 'start:2001:db8:0:1::/64', 'start:2001:db8:0:2::/64'])
  t.equal(await admin.get(`${prefix}rate:start:198.51.100.3`), '2', 'the mapped address counted as its IPv4')
})
