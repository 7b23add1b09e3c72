// The token service across replicas: three app instances on one Redis and one simulator, with a
// shared movable clock. Single flight (one refresh per merchant across replicas, blocking and in
// the background), a lock holder that died, shutdown mid-refresh, a stale writer, and cache
// invalidation, bounded and revalidated after a subscriber reconnect. The simulator rotates refresh
// tokens, so a second concurrent refresh or a lost refresh token shows up as a rejected grant.
import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import { build, onboard, secrets, startSimulator, type Built, until } from '../helper.js'
import { scanKeys, startRedis } from '../helpers/redis.js'
import { createKeyRing } from '../../src/key-ring.js'
import { createRedisKeys } from '../../src/redis-keys.js'
import { createTokenStore, type MerchantRecord, type TokenStore } from '../../src/token-store.js'
import type { Behavior, SimulatorOptions } from '../../src/simulator/app.js'

/** Past the background refresh point (2/3 ± 10 % of 15 min) with 180 s of validity left. */
const PAST_REFRESH_POINT_MS = 720_000
/** 30 s of validity left: below MIN_VALIDITY, a lookup must refresh first. */
const NEARLY_EXPIRED_MS = 870_000

interface Cluster {
  replicas: Built[]
  sim: Built['sim']
  advance: (ms: number) => void
  /** The shared clock of the replicas and the simulator. */
  now: () => number
  redis: Redis
  store: TokenStore
  prefix: string
  /** The Redis server's URL (for a MONITOR connection). */
  url: string
  lookup: (replica: Built, mid: string) => Promise<{ statusCode: number, body: string, json: () => any }>
  stored: (mid: string) => Promise<MerchantRecord>
}

async function cluster (t: Test, n = 3, simOptions: Partial<SimulatorOptions> = {}, env: Record<string, string> = {}): Promise<Cluster> {
  let offset = 0
  const now = (): number => Date.now() + offset
  const redisServer = await startRedis(t)
  const s = secrets()
  const sim = await startSimulator(t, { clientSecret: s.clientSecret, now, rotateRefreshTokens: true, ...simOptions })
  const replicas: Built[] = []
  for (let i = 0; i < n; i++) replicas.push(await build(t, { redis: redisServer, simulator: sim, secrets: s, now, env }))
  const redis = new Redis(redisServer.url, { maxRetriesPerRequest: 1 })
  redis.on('error', () => {})
  t.teardown(() => redis.disconnect())
  const config = replicas[0].config
  const store = createTokenStore(redis, createKeyRing(config.encryptionKeys), createRedisKeys(config.redisKeyPrefix))
  return {
    replicas,
    sim,
    advance: (ms) => { offset += ms },
    now,
    redis,
    store,
    prefix: config.redisKeyPrefix,
    url: redisServer.url,
    lookup: async (replica, mid) => await replica.app.inject({ url: `/internal/v1/merchants/${mid}/access-token`, headers: replica.auth }),
    async stored (mid) {
      const r = await store.get(mid)
      if (r === undefined) throw new Error(`${mid} is not stored`)
      return r
    }
  }
}

/** The status and error code of an answer: a lookup's body holds a token and never goes into a message. */
function said (res: { statusCode: number, body: string }): string {
  let code: unknown
  try { code = (JSON.parse(res.body) as { error?: { code?: unknown } }).error?.code } catch {}
  return typeof code === 'string' ? `${res.statusCode} ${code}` : String(res.statusCode)
}

/**
 * The commands Redis runs on the keys of the given merchants (their hash tag) while `fn` runs, as
 * MONITOR sees them: the replicas' reads, whatever the record's layout.
 */
async function commandsOn (t: Test, c: Cluster, mids: string[], fn: () => Promise<void>): Promise<string[]> {
  const client = new Redis(c.url)
  const monitor = await client.monitor()
  t.teardown(() => { monitor.disconnect(); client.disconnect() })
  const seen: string[][] = []
  monitor.on('monitor', (_time: string, args: string[]) => { seen.push(args) })
  // MONITOR shows commands in the order Redis runs them: a marker seen means all before it were.
  const mark = async (label: string): Promise<void> => {
    const marker = `${label}-${Math.random()}`
    await c.redis.echo(marker)
    if (!await until(() => seen.some(a => a[1] === marker), 5000)) throw new Error('MONITOR did not see the marker')
  }
  await mark('start')
  const from = seen.length
  await fn()
  await mark('end')
  const tags = mids.map(m => `{${m}}`)
  return seen.slice(from).filter(a => a.slice(1).some(arg => tags.some(tag => arg.includes(tag)))).map(a => `${a[0]} ${a[1]}`)
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
    t.equal(res.statusCode, 200, said(res))
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
  t.equal(bad.length, 0, `${what}: every answer 200${bad.length > 0 ? ` (e.g. ${said(bad[0])})` : ''}`)
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
  t.equal(res.statusCode, 200, `a later refresh works: ${said(res)}`)
  t.equal(c.sim.control.stats().refreshes, before + 1)
  const sent = c.sim.control.requests().filter(r => r.form.grant_type === 'refresh_token').at(-1)
  t.equal(sent?.form.refresh_token, rec.refreshToken, 'it used the stored refresh token')
}

/**
 * A blocking lookup on `via` of a connected merchant whose token is nearly expired, with
 * CyberSource slowed (and `fault` on refresh): resolves once the refresh reached CyberSource,
 * with the lookup still pending, and the token the merchant had before.
 */
async function refreshUnderWay (t: Test, c: Cluster, mid: string, via: Built, opts: { delayMs: number, fault?: Behavior['fault'] }): Promise<{ pending: ReturnType<Cluster['lookup']>, old: string }> {
  await connect(t, c, mid, via)
  const old = await warm(t, c, mid)
  c.sim.control.setBehavior({ delayMs: opts.delayMs, grantType: 'refresh_token', ...(opts.fault === undefined ? {} : { fault: opts.fault }) })
  c.advance(NEARLY_EXPIRED_MS)
  const pending = c.lookup(via, mid)
  t.ok(await until(() => refreshRequests(c) === 1, 5000), 'the refresh reached CyberSource')
  return { pending, old }
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
  t.ok(await until(async () => await c.redis.exists(`${c.prefix}lock:{m_bg}`) === 0, 5000), 'the lock was released')
  t.notOk(await until(() => refreshRequests(c) > 1, 1000), 'no second refresh request within a second after those lookups')
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
    t.ok(await until(async () => await c.redis.exists(`${c.prefix}lock:{m_dead_bg}`) === 0, 5000), 'the lock was released')
    t.not((await c.stored('m_dead_bg')).accessToken, old, 'the refresh was stored')
    t.notOk(await until(() => refreshRequests(c) > 1, 1000), 'no second refresh request within a second')
    t.equal(c.sim.control.stats().refreshes, 1, 'exactly one refresh')
    await assertRefreshTokenAlive(t, c, 'm_dead_bg')
  })
})

t.test('a holder whose lock was taken over leaves the new owner\'s lock alone', async t => {
  const c = await cluster(t, 1)
  const [a] = c.replicas
  await connect(t, c, 'm_lock_owner', a)
  const old = await warm(t, c, 'm_lock_owner')
  c.sim.control.setBehavior({ delayMs: 800, grantType: 'refresh_token' })
  c.advance(NEARLY_EXPIRED_MS)
  const key = `${c.prefix}lock:{m_lock_owner}`
  const pending = c.lookup(a, 'm_lock_owner')
  t.ok(await until(() => refreshRequests(c) === 1, 5000), 'the refresh is at CyberSource')
  const held = await c.redis.get(key)
  t.type(held, 'string', 'the replica holds the lock')
  // As if its lock had expired and another replica had taken it.
  await c.redis.set(key, 'another-replica', 'PX', 30_000)
  const res = await pending
  t.equal(res.statusCode, 200, said(res))
  t.equal(await c.redis.get(key), 'another-replica', 'the other owner\'s lock was not released')
  t.ok(await c.redis.pttl(key) > 20_000, 'nor renewed')
  t.not(res.json().access_token, old, 'a new token')
  t.equal((await c.stored('m_lock_owner')).accessToken, res.json().access_token, 'stored')
  t.equal(c.sim.control.stats().refreshes, 1)
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
  t.equal(res.statusCode, 200, said(res))
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
    t.equal(res.statusCode, 200, said(res))
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
    const { pending } = await refreshUnderWay(t, c, 'm_race2', a, { delayMs: 1000 })
    await connect(t, c, 'm_race2', b)
    const onboarded = await c.stored('m_race2')
    const res = await pending
    t.equal(res.statusCode, 200, said(res))
    t.equal(res.json().access_token, onboarded.accessToken, 'the lookup answers with the onboarding\'s token')
    t.ok(res.json().expires_in >= 895)
    const final = await c.stored('m_race2')
    t.equal(final.refreshToken, onboarded.refreshToken)
    t.equal(final.version, onboarded.version)
    c.sim.control.setBehavior({})
    await assertRefreshTokenAlive(t, c, 'm_race2')
  })
})

t.test('a refresh under way when the merchant is deleted never brings it back', async t => {
  const del = async (c: Cluster, replica: Built, mid: string): Promise<number> =>
    (await replica.app.inject({ method: 'DELETE', url: `/internal/v1/merchants/${mid}`, headers: replica.auth })).statusCode

  await t.test('deleted: the refresh\'s tokens are dropped, the merchant stays gone', async t => {
    const c = await cluster(t)
    const [a, b, third] = c.replicas
    const { pending } = await refreshUnderWay(t, c, 'm_gone', a, { delayMs: 1500 })
    t.equal(await del(c, b, 'm_gone'), 204, 'deleted while the refresh runs')
    const res = await pending
    t.equal(res.statusCode, 404, `the waiting lookup learns the merchant is gone: ${res.statusCode}`)
    t.equal(c.sim.control.stats().refreshes, 1, 'CyberSource did refresh')
    t.equal(await c.store.get('m_gone'), undefined, 'nothing was written after the delete')
    t.same(await scanKeys(c.redis, `${c.prefix}*{m_gone}*`), [], 'no key of the merchant is left')
    for (const r of [a, b, third]) t.equal((await c.lookup(r, 'm_gone')).statusCode, 404, 'every replica answers 404')
  })

  await t.test('deleted and onboarded again: the new onboarding stands', async t => {
    const c = await cluster(t)
    const [a, b, third] = c.replicas
    const { pending, old } = await refreshUnderWay(t, c, 'm_again', a, { delayMs: 1500 })
    t.equal(await del(c, b, 'm_again'), 204)
    await connect(t, c, 'm_again', b)
    const onboarded = await c.stored('m_again')
    t.equal(onboarded.version, 1, 'the version counter started again: only the grant tells the two apart')
    const res = await pending
    t.equal(res.statusCode, 200, said(res))
    t.equal(res.json().access_token, onboarded.accessToken, 'the lookup answers with the new onboarding\'s token')
    const final = await c.stored('m_again')
    t.equal(final.accessToken, onboarded.accessToken, 'the old grant\'s refresh wrote nothing')
    t.equal(final.refreshToken, onboarded.refreshToken)
    t.equal(final.grant, onboarded.grant)
    t.equal(final.version, onboarded.version)
    for (const r of [a, b, third]) {
      const got = await c.lookup(r, 'm_again')
      t.equal(got.json().access_token, onboarded.accessToken, 'every replica serves the new onboarding')
      t.not(got.json().access_token, old)
    }
    c.sim.control.setBehavior({})
    await assertRefreshTokenAlive(t, c, 'm_again')
  })

  await t.test('deleted and onboarded again while the old grant is rejected: the new onboarding stays connected', async t => {
    const c = await cluster(t)
    const [a, b] = c.replicas
    const { pending } = await refreshUnderWay(t, c, 'm_again409', a, { delayMs: 1500, fault: 'invalid_grant' })
    t.equal(await del(c, b, 'm_again409'), 204)
    await connect(t, c, 'm_again409', b)
    const onboarded = await c.stored('m_again409')
    const res = await pending
    t.equal(res.statusCode, 200, `the rejection of the old grant does not touch the new one: ${said(res)}`)
    const final = await c.stored('m_again409')
    t.equal(final.status, 'connected', 'still connected')
    t.equal(final.version, onboarded.version, 'not marked')
    c.sim.control.setBehavior({})
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
  t.equal(res.statusCode, 409, said(res))
  // Drop every pub/sub connection: the next change messages are lost while they reconnect.
  await c.redis.client('KILL', 'TYPE', 'pubsub')
  await connect(t, c, 'm_lost', b)
  const rec = await c.stored('m_lost')
  t.equal(rec.status, 'connected')
  t.ok(await until(async () => (await c.lookup(a, 'm_lost')).statusCode === 200, 2000), 'the replica that saw the rejection serves the new token')
  t.equal((await c.lookup(a, 'm_lost')).json().access_token, rec.accessToken)
})

const errorCode = (res: { body: string }): string | undefined => (JSON.parse(res.body) as { error?: { code?: string } }).error?.code

t.test('a lookup that waited on another replica\'s refresh re-checks what it finds', async t => {
  await t.test('the holder\'s refresh is rejected (slow CyberSource): every lookup on both replicas answers 409', async t => {
    const c = await cluster(t, 2)
    const [a, b] = c.replicas
    await connect(t, c, 'm_wait_409', a)
    await warm(t, c, 'm_wait_409')
    t.equal(c.sim.control.revokeRefreshTokens('m_wait_409'), 1)
    // Slow enough that B's lookups queue on A's lock while A's request is at CyberSource.
    c.sim.control.setBehavior({ delayMs: 800, grantType: 'refresh_token' })
    c.advance(NEARLY_EXPIRED_MS)

    const first = c.lookup(a, 'm_wait_409')
    t.ok(await until(() => refreshRequests(c) === 1, 5000), 'A holds the lock and its refresh is at CyberSource')
    t.equal(await c.redis.exists(`${c.prefix}lock:{m_wait_409}`), 1, 'the lock is held')
    const answers = await Promise.all([first, ...Array.from({ length: 60 }, async (_, i) => await c.lookup(i % 3 === 0 ? a : b, 'm_wait_409'))])
    const codes = answers.map(r => `${r.statusCode} ${errorCode(r) ?? ''}`)
    t.same([...new Set(codes)], ['409 reauthorization_required'], 'every answer is 409 reauthorization_required')
    t.equal(answers.filter(r => r.statusCode === 200).length, 0, 'no answer served the token that had < 60 s left')
    t.equal(refreshRequests(c), 1, 'one refresh request at CyberSource')
    t.equal((await c.stored('m_wait_409')).status, 'reauthorization_required')

    c.sim.control.setBehavior({})
    for (const r of [a, b]) {
      const res = await c.lookup(r, 'm_wait_409')
      t.equal(res.statusCode, 409, 'later lookups: 409')
    }
    t.equal(refreshRequests(c), 1, 'the dead refresh token is not sent again')
  })

  await t.test('the same without a delay: 100 concurrent lookups over both replicas', async t => {
    const c = await cluster(t, 2)
    await connect(t, c, 'm_wait_409_fast')
    await warm(t, c, 'm_wait_409_fast')
    c.sim.control.revokeRefreshTokens('m_wait_409_fast')
    c.advance(NEARLY_EXPIRED_MS)
    const answers = await storm(c, 'm_wait_409_fast', 100)
    t.same([...new Set(answers.map(r => `${r.statusCode} ${errorCode(r) ?? ''}`))], ['409 reauthorization_required'])
    t.ok(refreshRequests(c) <= 1, `at most one refresh request (${refreshRequests(c)})`)
  })
})

t.test('the in-process cache is revalidated when the subscriber reconnects: changed entries dropped, the others kept', async t => {
  const c = await cluster(t, 2)
  const [a, b] = c.replicas
  await connect(t, c, 'm_sub_deleted', a)
  await connect(t, c, 'm_sub_refreshed', a)
  await connect(t, c, 'm_sub_kept', a)
  const deletedToken = await warm(t, c, 'm_sub_deleted')
  const oldToken = await warm(t, c, 'm_sub_refreshed')
  const keptToken = await warm(t, c, 'm_sub_kept')
  t.equal(b.app.tokenService.cacheSize(), 3, 'B caches the three merchants')
  const channel = `${c.prefix}events`
  const subscribers = async (): Promise<number> => Number((await c.redis.pubsub('NUMSUB', channel) as [string, number])[1])
  t.equal(await subscribers(), 2, 'both replicas are subscribed')

  // Drop every pub/sub connection, then change two merchants through A before they are back
  // (ioredis waits at least 100 ms before reconnecting).
  await c.redis.client('KILL', 'TYPE', 'pubsub')
  const del = await a.app.inject({ method: 'DELETE', url: '/internal/v1/merchants/m_sub_deleted', headers: a.auth })
  t.equal(del.statusCode, 204)
  const forced = await a.app.inject({ method: 'POST', url: '/internal/v1/merchants/m_sub_refreshed/refresh', headers: a.auth })
  t.equal(forced.statusCode, 200, said(forced))
  // Subscriptions only come back, so none now means none when the changes were published.
  t.equal(await subscribers(), 0, 'the changes were published while no subscriber listened')
  t.ok(await until(async () => await subscribers() === 2, 10_000), 'both subscribers are back')
  // Entries stay servable while they are checked; once checked, only the unchanged one is left.
  t.ok(await until(() => b.app.tokenService.cacheSize() === 1, 5000), `B dropped the two changed entries (${b.app.tokenService.cacheSize()} left)`)

  const keptReads = await commandsOn(t, c, ['m_sub_kept'], async () => {
    for (let i = 0; i < 3; i++) {
      const kept = await c.lookup(b, 'm_sub_kept')
      t.equal(kept.statusCode, 200)
      t.equal(kept.json().access_token, keptToken, 'the unchanged merchant is served its token')
    }
  })
  t.same(keptReads, [], 'from memory: no command on its keys')

  const gone = await c.lookup(b, 'm_sub_deleted')
  t.equal(gone.statusCode, 404, `B does not serve the deleted merchant from its cache (got ${gone.statusCode})`)
  t.equal(errorCode(gone), 'merchant_not_found')
  t.notOk(gone.body.includes(deletedToken))
  const fresh = await c.lookup(b, 'm_sub_refreshed')
  t.equal(fresh.statusCode, 200)
  const stored = await c.stored('m_sub_refreshed')
  t.not(stored.accessToken, oldToken)
  t.equal(fresh.json().access_token, stored.accessToken, 'B serves the token refreshed while it was away, not its cached one')
  t.equal(c.sim.control.stats().refreshes, 1)
})

t.test('TOKEN_CACHE_MAX_ENTRIES: the least recently used merchant goes; its next lookup reads Redis and works', async t => {
  const c = await cluster(t, 1, {}, { TOKEN_CACHE_MAX_ENTRIES: '2' })
  const [a] = c.replicas
  const mids = ['m_lru_1', 'm_lru_2', 'm_lru_3']
  for (const m of mids) await connect(t, c, m, a)
  for (const m of mids) {
    t.equal((await c.lookup(a, m)).statusCode, 200)
    t.ok(a.app.tokenService.cacheSize() <= 2, `never more than 2 cached (${a.app.tokenService.cacheSize()})`)
  }
  const stored = new Map<string, string>()
  for (const m of mids) stored.set(m, (await c.stored(m)).accessToken)
  // m_lru_1 went when m_lru_3 came; m_lru_2 is used again, so m_lru_3 is now the least recent.
  const cached = await commandsOn(t, c, mids, async () => {
    for (const m of ['m_lru_3', 'm_lru_2']) t.equal((await c.lookup(a, m)).json().access_token, stored.get(m))
  })
  t.same(cached, [], 'the two cached merchants: no command on their keys')
  const evicted = await commandsOn(t, c, ['m_lru_1'], async () => {
    const res = await c.lookup(a, 'm_lru_1')
    t.equal(res.statusCode, 200, said(res))
    t.equal(res.json().access_token, stored.get('m_lru_1'), 'the evicted merchant is served its stored token')
  })
  t.ok(evicted.length > 0, `its lookup read Redis (${evicted.join(', ')})`)
  t.equal(a.app.tokenService.cacheSize(), 2)
  const after = await commandsOn(t, c, mids, async () => {
    for (const m of ['m_lru_1', 'm_lru_2']) t.equal((await c.lookup(a, m)).json().access_token, stored.get(m))
  })
  t.same(after, [], 'cached now, beside the other most recent one')
  t.ok((await commandsOn(t, c, ['m_lru_3'], async () => { t.equal((await c.lookup(a, 'm_lru_3')).statusCode, 200) })).length > 0, 'the least recent one went')
  t.equal(c.sim.control.stats().refreshes, 0, 'no refresh along the way')
})

t.test('TOKEN_CACHE_MAX_ENTRIES=0: 300 lookups over 3 replicas at expiry still make one refresh', async t => {
  const c = await cluster(t, 3, {}, { TOKEN_CACHE_MAX_ENTRIES: '0' })
  await connect(t, c, 'm_nocache')
  const old = await warm(t, c, 'm_nocache')
  for (const r of c.replicas) t.equal(r.app.tokenService.cacheSize(), 0, 'nothing cached')
  c.advance(NEARLY_EXPIRED_MS)
  const answers = await storm(c, 'm_nocache', 300)
  const token = assertAll200SameToken(t, answers, '300 lookups')
  t.not(token, old, 'a new token')
  t.equal(refreshRequests(c), 1, 'exactly one refresh request')
  t.equal((await c.stored('m_nocache')).accessToken, token)
  t.equal(assertAll200SameToken(t, await storm(c, 'm_nocache', 30), 'after'), token)
  t.equal(refreshRequests(c), 1)
})

t.test('a forced refresh while a due background refresh of the same merchant is in flight', async t => {
  for (const via of ['the same replica', 'another replica']) {
    await t.test(`slow CyberSource, forced on ${via}: the answer and every later lookup carry the newest tokens`, async t => {
      const c = await cluster(t, 2)
      const [a, b] = c.replicas
      const forcer = via === 'the same replica' ? a : b
      await connect(t, c, 'm_force_due', a)
      const old = await warm(t, c, 'm_force_due')
      c.sim.control.setBehavior({ delayMs: 1000, grantType: 'refresh_token' })
      c.advance(PAST_REFRESH_POINT_MS)
      const bg = await c.lookup(a, 'm_force_due')
      t.equal(bg.json().access_token, old, 'the lookup is answered at once; the due refresh runs in the background')
      t.ok(await until(() => refreshRequests(c) === 1, 5000), 'the due refresh is at CyberSource')

      const startedAt = c.now()
      const res = await forcer.app.inject({ method: 'POST', url: '/internal/v1/merchants/m_force_due/refresh', headers: forcer.auth })
      t.equal(res.statusCode, 200, said(res))
      const s = res.json()
      t.equal(s.status, 'connected')
      t.ok(s.last_refreshed_at !== null && Date.parse(s.last_refreshed_at) >= startedAt, `refreshed after the forced request started (${s.last_refreshed_at} vs ${new Date(startedAt).toISOString()})`)
      const rec = await c.stored('m_force_due')
      t.equal(s.last_refreshed_at, new Date(rec.lastRefreshedAt ?? 0).toISOString(), 'the answer describes the stored record')
      t.equal(s.access_token_expires_at, new Date(rec.accessTokenExpiresAt).toISOString())
      t.not(rec.accessToken, old)
      for (const r of c.replicas) {
        t.ok(await until(async () => (await c.lookup(r, 'm_force_due')).json().access_token === rec.accessToken, 3000), 'every replica serves the newest token')
      }
      t.equal(assertAll200SameToken(t, await storm(c, 'm_force_due', 20), 'afterwards'), rec.accessToken)
      t.ok(refreshRequests(c) >= 1 && refreshRequests(c) <= 2, `one or two refreshes (${refreshRequests(c)})`)
      c.sim.control.setBehavior({})
      await assertRefreshTokenAlive(t, c, 'm_force_due')
    })
  }

  await t.test('the due refresh finds nothing to do: the forced one still refreshes', async t => {
    const c = await cluster(t, 1)
    const [a] = c.replicas
    await connect(t, c, 'm_force_noop', a)
    const old = await warm(t, c, 'm_force_noop')
    // Another replica holds the lock, so the due refresh started below waits for it.
    t.equal(await c.redis.set(`${c.prefix}lock:{m_force_noop}`, 'another-replica', 'PX', 1500, 'NX'), 'OK')
    c.advance(PAST_REFRESH_POINT_MS)
    t.equal((await c.lookup(a, 'm_force_noop')).json().access_token, old, 'due: answered at once, refresh started')
    // Back before the refresh point: once it gets the lock, the due refresh has nothing to do.
    c.advance(-PAST_REFRESH_POINT_MS)
    const startedAt = c.now()
    const res = await a.app.inject({ method: 'POST', url: '/internal/v1/merchants/m_force_noop/refresh', headers: a.auth })
    t.equal(res.statusCode, 200, said(res))
    const s = res.json()
    t.ok(s.last_refreshed_at !== null && Date.parse(s.last_refreshed_at) >= startedAt, `the forced refresh happened (last_refreshed_at ${s.last_refreshed_at})`)
    t.equal(refreshRequests(c), 1, 'exactly one refresh request: the forced one')
    const rec = await c.stored('m_force_noop')
    t.not(rec.accessToken, old)
    const after = await c.lookup(a, 'm_force_noop')
    t.equal(after.json().access_token, rec.accessToken, 'the new token is served')
    await assertRefreshTokenAlive(t, c, 'm_force_noop')
  })
})
