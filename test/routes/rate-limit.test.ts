// Rate limiting of the browser-facing /oauth routes: one Redis-backed counter shared by every
// replica (two app instances on one Redis here), per client address, not applied to the internal
// API or the operations routes, and out of the way when Redis is down (the route answers its 503).
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import { build, secrets, startSimulator, type Built } from '../helper.js'
import { startRedis, type TestRedis } from '../helpers/redis.js'

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
  assertLimited(t, await get(b, '/oauth/callback?code=c&state=s'), 'the callback (same /oauth scope)')
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
  t.ok(rateKeys.length >= 1, `rate-limit counters stored (${rateKeys.join(', ')})`)
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
