// The token service across replicas: three app instances on one Redis and one simulator, with a
// shared movable clock. Single flight (one refresh per merchant across replicas, blocking and in
// the background), a lock holder that died, shutdown mid-refresh, a stale writer, and cache
// invalidation. The simulator rotates refresh tokens, so a second concurrent refresh or a lost
// refresh token shows up as a rejected grant.
import t, { type Test } from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { build, onboard, secrets, startSimulator, type Built } from '../helper.js'
import { startRedis } from '../helpers/redis.js'
import { createKeyRing } from '../../src/key-ring.js'
import { createRedisKeys } from '../../src/redis-keys.js'
import { createTokenStore, type MerchantRecord, type TokenStore } from '../../src/token-store.js'
import type { SimulatorOptions } from '../../src/simulator/app.js'

/** Past the background refresh point (2/3 ± 10 % of 15 min) with 180 s of validity left. */
const PAST_REFRESH_POINT_MS = 720_000
/** 30 s of validity left: below MIN_VALIDITY, a lookup must refresh first. */
const NEARLY_EXPIRED_MS = 870_000

interface Cluster {
  replicas: Built[]
  sim: Built['sim']
  advance: (ms: number) => void
  redis: Redis
  store: TokenStore
  prefix: string
  lookup: (replica: Built, mid: string) => Promise<{ statusCode: number, body: string, json: () => any }>
  stored: (mid: string) => Promise<MerchantRecord>
}

async function cluster (t: Test, n = 3, simOptions: Partial<SimulatorOptions> = {}): Promise<Cluster> {
  let offset = 0
  const now = (): number => Date.now() + offset
  const redisServer = await startRedis(t)
  const s = secrets()
  const sim = await startSimulator(t, { clientSecret: s.clientSecret, now, rotateRefreshTokens: true, ...simOptions })
  const replicas: Built[] = []
  for (let i = 0; i < n; i++) replicas.push(await build(t, { redis: redisServer, simulator: sim, secrets: s, now }))
  const redis = new Redis(redisServer.url, { maxRetriesPerRequest: 1 })
  redis.on('error', () => {})
  t.teardown(() => redis.disconnect())
  const config = replicas[0].config
  const store = createTokenStore(redis, createKeyRing(config.encryptionKeys), createRedisKeys(config.redisKeyPrefix))
  return {
    replicas,
    sim,
    advance: (ms) => { offset += ms },
    redis,
    store,
    prefix: config.redisKeyPrefix,
    lookup: async (replica, mid) => await replica.app.inject({ url: `/internal/v1/merchants/${mid}/access-token`, headers: replica.auth }),
    async stored (mid) {
      const r = await store.get(mid)
      if (r === undefined) throw new Error(`${mid} is not stored`)
      return r
    }
  }
}

async function until (predicate: () => Promise<boolean> | boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await predicate()) return true
    if (Date.now() > deadline) return false
    await sleep(25)
  }
}

const refreshRequests = (c: Cluster): number => c.sim.control.requests().filter(r => r.form.grant_type === 'refresh_token').length

async function connect (t: Test, c: Cluster, mid: string, via = c.replicas[0]): Promise<void> {
  const res = await onboard(via, mid)
  t.equal(res.statusCode, 200, `onboarded ${mid}`)
}

/** One lookup per replica; returns the token, asserting they all agree. */
async function warm (t: Test, c: Cluster, mid: string): Promise<string> {
  const tokens = new Set<string>()
  for (const r of c.replicas) {
    const res = await c.lookup(r, mid)
    t.equal(res.statusCode, 200, res.body)
    tokens.add(res.json().access_token)
  }
  t.equal(tokens.size, 1, 'every replica serves the same token')
  return [...tokens][0]
}

/** n concurrent lookups spread round-robin over the replicas. */
async function storm (c: Cluster, mid: string, n: number): Promise<Array<{ statusCode: number, body: string, json: () => any }>> {
  return await Promise.all(Array.from({ length: n }, async (_, i) => await c.lookup(c.replicas[i % c.replicas.length], mid)))
}

function assertAll200SameToken (t: Test, answers: Array<{ statusCode: number, body: string, json: () => any }>, what: string): string {
  const bad = answers.filter(a => a.statusCode !== 200)
  t.equal(bad.length, 0, `${what}: every answer 200${bad.length > 0 ? ` (e.g. ${bad[0].statusCode} ${bad[0].body})` : ''}`)
  const tokens = new Set(answers.filter(a => a.statusCode === 200).map(a => a.json().access_token as string))
  t.equal(tokens.size, 1, `${what}: one token in all answers`)
  return [...tokens][0]
}

/** The stored record decrypts, and its refresh token is the live one at CyberSource: a forced refresh works. */
async function assertRefreshTokenAlive (t: Test, c: Cluster, mid: string): Promise<void> {
  const before = c.sim.control.stats().refreshes
  const rec = await c.stored(mid)
  t.equal(rec.status, 'connected')
  const res = await c.replicas[c.replicas.length - 1].app.inject({ method: 'POST', url: `/internal/v1/merchants/${mid}/refresh`, headers: c.replicas[0].auth })
  t.equal(res.statusCode, 200, `a later refresh works: ${res.body}`)
  t.equal(c.sim.control.stats().refreshes, before + 1)
  const sent = c.sim.control.requests().filter(r => r.form.grant_type === 'refresh_token').at(-1)
  t.equal(sent?.form.refresh_token, rec.refreshToken, 'it used the stored refresh token')
}

for (const delayMs of [0, 1500]) {
  t.test(`blocking refresh, 300 concurrent lookups over 3 replicas, CyberSource ${delayMs === 0 ? 'fast' : `slow (${delayMs} ms)`}`, async t => {
    const c = await cluster(t)
    await connect(t, c, 'm_storm')
    const old = await warm(t, c, 'm_storm')
    if (delayMs > 0) c.sim.control.setBehavior({ delayMs, grantType: 'refresh_token' })
    c.advance(NEARLY_EXPIRED_MS)

    const answers = await storm(c, 'm_storm', 300)
    const token = assertAll200SameToken(t, answers, '300 lookups')
    t.not(token, old, 'a new token')
    t.ok(answers.every(a => a.statusCode !== 200 || a.json().expires_in >= 895), 'every answer has a full lifetime')
    t.equal(c.sim.control.stats().refreshes, 1, 'exactly one refresh at CyberSource')
    t.equal(refreshRequests(c), 1, 'exactly one refresh request')
    t.equal(c.sim.control.stats().failures, 0)
    const rec = await c.stored('m_storm')
    t.equal(rec.accessToken, token, 'the stored token is the one served')
    t.equal(rec.status, 'connected')
    t.equal(await c.redis.exists(`${c.prefix}lock:{m_storm}`), 0, 'the lock was released')

    // The replicas stay on the new token without another refresh.
    t.equal(assertAll200SameToken(t, await storm(c, 'm_storm', 60), 'after'), token)
    t.equal(c.sim.control.stats().refreshes, 1)
    await assertRefreshTokenAlive(t, c, 'm_storm')
  })
}

t.test('background refresh: answers at once with the current token, one refresh across replicas', async t => {
  const c = await cluster(t)
  await connect(t, c, 'm_bg')
  const old = await warm(t, c, 'm_bg')
  // Slow enough that an answer that waited for the refresh would carry the new token.
  c.sim.control.setBehavior({ delayMs: 1000, grantType: 'refresh_token' })
  c.advance(PAST_REFRESH_POINT_MS)

  const answers = await storm(c, 'm_bg', 300)
  t.equal(assertAll200SameToken(t, answers, 'during the background refresh'), old, 'the current token, without waiting')
  t.ok(answers.every(a => a.json().expires_in >= 170 && a.json().expires_in <= 180), 'with its remaining lifetime')
  t.ok(await until(async () => (await c.stored('m_bg')).accessToken !== old, 10_000), 'a refresh was stored')
  const rec = await c.stored('m_bg')
  t.not(rec.accessToken, old)
  // Every replica moves to the new token (pub/sub), none refreshes again.
  t.ok(await until(async () => (await storm(c, 'm_bg', 3)).every(a => a.json().access_token === rec.accessToken), 5000), 'every replica serves the new token')
  for (let i = 0; i < 3; i++) {
    t.equal(assertAll200SameToken(t, await storm(c, 'm_bg', 100), `round ${i}`), rec.accessToken)
  }
  await sleep(300) // a refresh started by those lookups would have reached the simulator by now
  t.equal(c.sim.control.stats().refreshes, 1, 'still exactly one refresh')
  t.equal(refreshRequests(c), 1)
  await assertRefreshTokenAlive(t, c, 'm_bg')
})

t.test('a lock holder that died mid-refresh', async t => {
  await t.test('token expired: lookups wait for the lock to expire, then one replica refreshes', async t => {
    const c = await cluster(t)
    await connect(t, c, 'm_dead')
    const old = await warm(t, c, 'm_dead')
    const before = await c.stored('m_dead')
    t.equal(await c.redis.set(`${c.prefix}lock:{m_dead}`, 'a-replica-that-died', 'PX', 1500, 'NX'), 'OK')
    c.advance(NEARLY_EXPIRED_MS)

    const answers = await storm(c, 'm_dead', 60)
    const token = assertAll200SameToken(t, answers, 'lookups behind a dead lock')
    t.not(token, old, 'a new token')
    t.equal(c.sim.control.stats().refreshes, 1, 'exactly one refresh')
    t.equal(refreshRequests(c), 1)
    t.equal(await c.redis.exists(`${c.prefix}lock:{m_dead}`), 0, 'no lock left behind')
    const rec = await c.stored('m_dead')
    t.equal(rec.accessToken, token)
    t.not(rec.refreshToken, before.refreshToken, 'the rotated refresh token was stored')
    t.equal(rec.version, before.version + 1)
    await assertRefreshTokenAlive(t, c, 'm_dead')
  })

  await t.test('token still valid: the current token is served, the refresh happens once the lock expires', async t => {
    const c = await cluster(t)
    await connect(t, c, 'm_dead_bg')
    const old = await warm(t, c, 'm_dead_bg')
    t.equal(await c.redis.set(`${c.prefix}lock:{m_dead_bg}`, 'a-replica-that-died', 'PX', 1500, 'NX'), 'OK')
    c.advance(PAST_REFRESH_POINT_MS)
    t.equal(assertAll200SameToken(t, await storm(c, 'm_dead_bg', 60), 'behind a dead lock'), old)
    t.ok(await until(() => c.sim.control.stats().refreshes >= 1, 10_000), 'refreshed after the lock expired')
    t.ok(await until(async () => (await storm(c, 'm_dead_bg', 3)).every(a => a.json().access_token !== old), 5000), 'every replica moves on')
    await sleep(300)
    t.equal(c.sim.control.stats().refreshes, 1, 'exactly one refresh')
    await assertRefreshTokenAlive(t, c, 'm_dead_bg')
  })
})

t.test('a replica shut down mid-refresh stores the tokens CyberSource issued', async t => {
  const c = await cluster(t)
  await connect(t, c, 'm_close')
  const old = await warm(t, c, 'm_close')
  const [a, b] = c.replicas
  c.sim.control.setBehavior({ delayMs: 800, grantType: 'refresh_token' })
  c.advance(NEARLY_EXPIRED_MS)
  const pending = c.lookup(a, 'm_close')
  t.ok(await until(() => refreshRequests(c) === 1, 5000), 'the refresh is under way')
  await a.app.close()
  const res = await pending
  t.equal(res.statusCode, 200, res.body)
  t.not(res.json().access_token, old)
  const rec = await c.stored('m_close')
  t.equal(rec.accessToken, res.json().access_token, 'stored before the replica went away')
  t.equal(c.sim.control.stats().refreshes, 1)
  const fromB = await c.lookup(b, 'm_close')
  t.equal(fromB.statusCode, 200)
  t.equal(fromB.json().access_token, rec.accessToken, 'another replica serves it without refreshing')
  t.equal(c.sim.control.stats().refreshes, 1)
  c.sim.control.setBehavior({})
  await assertRefreshTokenAlive(t, { ...c, replicas: c.replicas.slice(1) }, 'm_close')
})

t.test('a stale writer never overwrites a newer pair', async t => {
  await t.test('forced refresh racing a new onboarding', async t => {
    const c = await cluster(t)
    const [a, b, third] = c.replicas
    await connect(t, c, 'm_race', a)
    await warm(t, c, 'm_race')
    c.sim.control.setBehavior({ delayMs: 1000, grantType: 'refresh_token' })
    const forced = a.app.inject({ method: 'POST', url: '/internal/v1/merchants/m_race/refresh', headers: a.auth })
    t.ok(await until(() => refreshRequests(c) === 1, 5000), 'the refresh reached CyberSource')
    await connect(t, c, 'm_race', b) // the code exchange is not delayed
    const onboarded = await c.stored('m_race')
    t.equal(onboarded.lastRefreshedAt, null)

    const res = await forced
    t.equal(res.statusCode, 200, res.body)
    t.match(res.json(), { merchant_id: 'm_race', status: 'connected', last_refreshed_at: null }, 'answers with the newer (onboarding) record')
    t.equal(c.sim.control.stats().refreshes, 1, 'the refresh did succeed at CyberSource')
    const final = await c.stored('m_race')
    t.equal(final.accessToken, onboarded.accessToken, 'the onboarding\'s access token stands')
    t.equal(final.refreshToken, onboarded.refreshToken, 'the onboarding\'s refresh token stands')
    t.equal(final.version, onboarded.version, 'nothing was written after the onboarding')
    for (const r of [a, b, third]) {
      t.ok(await until(async () => (await c.lookup(r, 'm_race')).json().access_token === onboarded.accessToken, 3000), 'every replica serves the onboarding\'s token')
    }
    c.sim.control.setBehavior({})
    await assertRefreshTokenAlive(t, c, 'm_race')
  })

  await t.test('blocking lookup racing a new onboarding', async t => {
    const c = await cluster(t)
    const [a, b] = c.replicas
    await connect(t, c, 'm_race2', a)
    await warm(t, c, 'm_race2')
    c.sim.control.setBehavior({ delayMs: 1000, grantType: 'refresh_token' })
    c.advance(NEARLY_EXPIRED_MS)
    const pending = c.lookup(a, 'm_race2')
    t.ok(await until(() => refreshRequests(c) === 1, 5000), 'the refresh reached CyberSource')
    await connect(t, c, 'm_race2', b)
    const onboarded = await c.stored('m_race2')
    const res = await pending
    t.equal(res.statusCode, 200, res.body)
    t.equal(res.json().access_token, onboarded.accessToken, 'the lookup answers with the onboarding\'s token')
    t.ok(res.json().expires_in >= 895)
    const final = await c.stored('m_race2')
    t.equal(final.refreshToken, onboarded.refreshToken)
    t.equal(final.version, onboarded.version)
    c.sim.control.setBehavior({})
    await assertRefreshTokenAlive(t, c, 'm_race2')
  })
})

t.test('reauthorization seen by one replica is lifted by an onboarding on another, even if the change message is lost', async t => {
  const c = await cluster(t, 2)
  const [a, b] = c.replicas
  await connect(t, c, 'm_lost', a)
  await warm(t, c, 'm_lost')
  c.sim.control.revokeRefreshTokens('m_lost')
  c.advance(NEARLY_EXPIRED_MS)
  const res = await c.lookup(a, 'm_lost')
  t.equal(res.statusCode, 409, res.body)
  // Drop every pub/sub connection: the next change messages are lost while they reconnect.
  await c.redis.client('KILL', 'TYPE', 'pubsub')
  await connect(t, c, 'm_lost', b)
  const rec = await c.stored('m_lost')
  t.equal(rec.status, 'connected')
  t.ok(await until(async () => (await c.lookup(a, 'm_lost')).statusCode === 200, 2000), 'the replica that saw the rejection serves the new token')
  t.equal((await c.lookup(a, 'm_lost')).json().access_token, rec.accessToken)
})
