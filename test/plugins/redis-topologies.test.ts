// The service on Redis Cluster and on Redis Sentinel, against real private redis-server processes
// (test/helpers/redis-topologies.ts). build() still starts a private standalone Redis for
// REDIS_URL; REDIS_CLUSTER_NODES / REDIS_SENTINELS take precedence, and the tests check that
// nothing was written to it.
//
// Cluster (3 masters, two app instances, the second given the node list in another order):
// onboardings land on every master; lookup; forced refresh (Lua CAS on the hash-tagged record);
// list pagination across masters, each page fetched from the other instance (the cursor must mean
// the same on every replica); delete (record and lock gone, the other instance's cache
// invalidated); one refresh across two instances under concurrent lookups; pub/sub invalidation;
// readiness; the merchants gauge; every key under the prefix.
//
// Sentinel (master, replica, one sentinel, two app instances): onboarding, lookup, forced refresh,
// list, readiness; then failover. The master is killed only once the replica has processed
// everything the master holds (replication offsets compared: the WAIT guarantee), so no data may be
// lost; the test waits for the sentinel to promote the replica and then asserts that the service
// recovers by itself within a bounded poll: status reads (uncached) see the data written before the
// failover, readiness is 200, writes (forced refresh, onboarding) land on the new master, and the
// pub/sub subscription is re-established (instance B serves the token instance A refreshed).
import t, { type Test } from 'tap'
import { Cluster, type Redis } from 'ioredis'
import { build, onboard, secrets, startSimulator, type Built } from '../helper.js'
import { scanKeys, startRedis } from '../helpers/redis.js'
import { HOST, adminClient, infoField, startCluster, startSentinel, until } from '../helpers/redis-topologies.js'
import { createKeyRing } from '../../src/key-ring.js'
import { createRedisKeys } from '../../src/redis-keys.js'
import { createTokenStore, type MerchantRecord, type TokenStore } from '../../src/token-store.js'

const PREFIX = 'topo:'
/** 30 s of validity left: below MIN_VALIDITY, a lookup must refresh first. */
const NEARLY_EXPIRED_MS = 870_000

type Res = Awaited<ReturnType<Built['app']['inject']>>

const lookup = async (b: Built, mid: string): Promise<Res> => await b.app.inject({ url: `/internal/v1/merchants/${mid}/access-token`, headers: b.auth })
const status = async (b: Built, mid: string): Promise<Res> => await b.app.inject({ url: `/internal/v1/merchants/${mid}`, headers: b.auth })
const forceRefresh = async (b: Built, mid: string): Promise<Res> => await b.app.inject({ method: 'POST', url: `/internal/v1/merchants/${mid}/refresh`, headers: b.auth })
const ready = async (b: Built): Promise<Res> => await b.app.inject({ url: '/health/ready' })
const tokenOf = (res: Res): string => res.json().access_token
/** The response body as an assertion message only when the status is not the expected one (bodies may hold a token). */
const why = (res: Res, expected = 200): string => res.statusCode === expected ? `status ${expected}` : `status ${res.statusCode}: ${res.body}`

/** Walks the list route with `limit`, each page on the next instance in turn; returns the pages' ids. */
async function walkList (t: Test, instances: Built[], limit: number): Promise<string[][]> {
  const pages: string[][] = []
  let cursor: string | null | undefined
  for (let i = 0; i < 100 && cursor !== null; i++) {
    const via = instances[i % instances.length]
    const res = await via.app.inject({ url: `/internal/v1/merchants?limit=${limit}${cursor === undefined ? '' : `&cursor=${encodeURIComponent(cursor)}`}`, headers: via.auth })
    t.equal(res.statusCode, 200, `list page ${i + 1}: ${res.statusCode === 200 ? 'ok' : res.body}`)
    if (res.statusCode !== 200) break
    const body = res.json() as { items: Array<{ merchant_id: string, status: string }>, next_cursor: string | null }
    t.ok(body.items.length <= limit, `page ${i + 1} holds at most ${limit} items`)
    t.ok(body.items.every(m => m.status === 'connected'))
    pages.push(body.items.map(m => m.merchant_id))
    cursor = body.next_cursor
  }
  t.equal(cursor, null, 'the last page has next_cursor null')
  return pages
}

function assertEachOnce (t: Test, pages: string[][], expected: string[], what: string): void {
  const seen = pages.flat()
  const dupes = seen.filter((id, i) => seen.indexOf(id) !== i)
  t.same(dupes, [], `${what}: no merchant listed twice`)
  t.same([...new Set(seen)].sort(), [...expected].sort(), `${what}: every merchant listed`)
}

t.test('Redis Cluster: 3 masters, two app instances', async t => {
  let offset = 0
  const now = (): number => Date.now() + offset
  const s = secrets()
  // Refresh tokens rotate, so a second refresh of one grant would show up as a rejected grant.
  const sim = await startSimulator(t, { clientSecret: s.clientSecret, now, rotateRefreshTokens: true })
  const standalone = await startRedis(t)
  const cluster = await startCluster(t, 3)
  const env = { REDIS_CLUSTER_NODES: cluster.spec, REDIS_KEY_PREFIX: PREFIX, RATE_LIMIT_MAX: '100000' }
  const a = await build(t, { env, redis: standalone, simulator: sim, secrets: s, now })
  // Same cluster, node list in another order (ioredis keeps its masters in startup order).
  const reversed = cluster.spec.split(',').reverse().join(',')
  const b = await build(t, { env: { ...env, REDIS_CLUSTER_NODES: reversed }, redis: standalone, simulator: sim, secrets: s, now })
  t.equal(a.config.redis.mode, 'cluster', 'REDIS_CLUSTER_NODES takes precedence over REDIS_URL')
  t.ok(a.app.redis instanceof Cluster, 'the app talks to the cluster')

  // The test's own view of the data: a cluster client and the app's key layout and token store.
  const inspect = new Cluster(cluster.spec.split(',').map(hp => ({ host: HOST, port: Number(hp.split(':')[1]) })), { redisOptions: { maxRetriesPerRequest: 1 } })
  inspect.on('error', () => {})
  t.teardown(() => { inspect.disconnect() })
  const keys = createRedisKeys(PREFIX)
  const store: TokenStore = createTokenStore(inspect, createKeyRing(a.config.encryptionKeys), keys)
  const stored = async (mid: string): Promise<MerchantRecord> => {
    const r = await store.get(mid)
    if (r === undefined) throw new Error(`${mid} is not stored`)
    return r
  }
  const refreshes = (): number => sim.control.stats().refreshes

  // Both instances subscribe to the events channel (each on some node: Cluster PUBLISH reaches all).
  await until('both instances to subscribe to the events channel', 20_000, async () => {
    let n = 0
    for (const c of cluster.clients) n += Number((await c.call('PUBSUB', 'NUMSUB', keys.events) as [string, number])[1])
    return n >= 2 ? true : undefined
  })

  const merchants = Array.from({ length: 30 }, (_, i) => `m_topo_${String(i).padStart(2, '0')}`)
  /** The node index holding each merchant's record. */
  const home = new Map<string, number>()

  await t.test('onboardings land on every master', async t => {
    for (const [i, mid] of merchants.entries()) {
      const res = await onboard(i % 2 === 0 ? a : b, mid)
      t.equal(res.statusCode, 200, `onboarded ${mid}`)
    }
    let total = 0
    for (const [i, c] of cluster.clients.entries()) {
      const found = (await scanKeys(c, keys.merchantPattern)).map(k => keys.merchantIdOf(k) ?? '')
      t.ok(found.length > 0, `master ${i + 1} holds merchant records (${found.length})`)
      t.ok(await c.dbsize() >= found.length, `master ${i + 1}: DBSIZE counts them`)
      for (const mid of found) home.set(mid, i)
      total += found.length
    }
    t.equal(total, merchants.length, 'each record exists once in the cluster')
    t.same([...home.keys()].sort(), merchants)
    for (const mid of merchants.slice(0, 3)) {
      // The hash tag puts a merchant's record and lock in one slot (multi-key scripts need it).
      const slot = await inspect.call('CLUSTER', 'KEYSLOT', keys.merchant(mid))
      t.equal(await inspect.call('CLUSTER', 'KEYSLOT', keys.lock(mid)), slot, `${mid}: record and lock share a slot`)
      t.ok(Number(await cluster.clients[home.get(mid) ?? 0].call('CLUSTER', 'COUNTKEYSINSLOT', String(slot))) >= 1, `${mid}: its slot holds keys on the master that has the record`)
    }
  })

  // One merchant per master, for the per-merchant checks.
  const perNode = [0, 1, 2].map(n => merchants.find(mid => home.get(mid) === n) ?? '')

  await t.test('access-token lookup on every master', async t => {
    for (const mid of perNode) {
      const rec = await stored(mid)
      for (const inst of [a, b]) {
        const res = await lookup(inst, mid)
        t.equal(res.statusCode, 200, why(res))
        t.equal(tokenOf(res), rec.accessToken, `${mid}: the stored token is served`)
        t.ok(res.json().expires_in >= 60)
      }
      const raw = await inspect.hgetall(keys.merchant(mid))
      t.notOk(Object.values(raw).some(v => v.includes(rec.accessToken) || v.includes(rec.refreshToken)), `${mid}: no plaintext token in Redis`)
    }
  })

  await t.test('forced refresh (compare-and-set on the hash-tagged record)', async t => {
    for (const mid of perNode) {
      const before = await stored(mid)
      const count = refreshes()
      const res = await forceRefresh(a, mid)
      t.equal(res.statusCode, 200, why(res))
      t.equal(res.json().status, 'connected')
      t.equal(refreshes(), count + 1, `${mid}: one refresh at CyberSource`)
      const after = await stored(mid)
      t.equal(after.version, before.version + 1, `${mid}: version moved by one`)
      t.not(after.accessToken, before.accessToken, `${mid}: new access token stored`)
      t.not(after.refreshToken, before.refreshToken, `${mid}: new (rotated) refresh token stored`)
      t.equal(tokenOf(await lookup(a, mid)), after.accessToken, `${mid}: the refreshing instance serves the new token`)
    }
  })

  await t.test('list pagination across masters, cursor handed between instances', async t => {
    const pages = await walkList(t, [a, b], 7)
    t.ok(pages.length >= Math.ceil(merchants.length / 7), `${pages.length} pages`)
    assertEachOnce(t, pages, merchants, 'limit 7')
    assertEachOnce(t, await walkList(t, [b], 500), merchants, 'limit 500')
    assertEachOnce(t, await walkList(t, [a], 1), merchants, 'limit 1')
  })

  await t.test('delete removes the record and the lock, everywhere', async t => {
    for (const mid of perNode) {
      t.equal((await lookup(a, mid)).statusCode, 200, 'instance A has the merchant cached')
      // A held lock (as during a refresh) goes with the record.
      t.equal(await inspect.set(keys.lock(mid), 'someone', 'PX', 60_000), 'OK')
      const res = await b.app.inject({ method: 'DELETE', url: `/internal/v1/merchants/${mid}`, headers: b.auth })
      t.equal(res.statusCode, 204, why(res, 204))
      t.equal(await inspect.exists(keys.merchant(mid)), 0, `${mid}: record gone`)
      t.equal(await inspect.exists(keys.lock(mid)), 0, `${mid}: lock gone`)
      t.equal((await status(a, mid)).statusCode, 404)
      // Instance A's cached token is dropped by the delete event.
      await until(`instance A to drop ${mid}`, 10_000, async () => (await lookup(a, mid)).statusCode === 404 ? true : undefined)
      t.equal((await b.app.inject({ method: 'DELETE', url: `/internal/v1/merchants/${mid}`, headers: b.auth })).statusCode, 404)
    }
    const left = merchants.filter(m => !perNode.includes(m))
    assertEachOnce(t, await walkList(t, [a, b], 4), left, 'after delete')
  })

  await t.test('one refresh across two instances under concurrent lookups', async t => {
    const mid = 'm_topo_lock'
    t.equal((await onboard(a, mid)).statusCode, 200)
    const old = tokenOf(await lookup(a, mid))
    t.equal(tokenOf(await lookup(b, mid)), old, 'both instances serve the same token')
    const count = refreshes()
    const failures = sim.control.stats().failures
    offset += NEARLY_EXPIRED_MS
    const answers = await Promise.all(Array.from({ length: 24 }, async (_, i) => await lookup(i % 2 === 0 ? a : b, mid)))
    const bad = answers.filter(r => r.statusCode !== 200)
    t.equal(bad.length, 0, `every lookup 200${bad.length > 0 ? ` (e.g. ${bad[0].statusCode} ${bad[0].body})` : ''}`)
    const tokens = new Set(answers.map(tokenOf))
    t.equal(tokens.size, 1, 'one token in all answers')
    const token = [...tokens][0]
    t.not(token, old, 'a new token')
    t.ok(answers.every(r => r.json().expires_in >= 60), 'every answer is valid for at least 60 s')
    t.equal(refreshes(), count + 1, 'exactly one refresh at CyberSource')
    t.equal(sim.control.stats().failures, failures, 'no rejected refresh')
    t.equal((await stored(mid)).accessToken, token, 'the stored token is the one served')
    t.equal(await inspect.exists(keys.lock(mid)), 0, 'the lock was released')
  })

  await t.test('pub/sub invalidation: instance B serves the token instance A refreshed', async t => {
    const mid = 'm_topo_pubsub'
    t.equal((await onboard(a, mid)).statusCode, 200)
    const old = tokenOf(await lookup(b, mid))
    t.equal(tokenOf(await lookup(b, mid)), old, 'instance B has the token cached')
    const count = refreshes()
    const res = await forceRefresh(a, mid)
    t.equal(res.statusCode, 200, why(res))
    const fresh = (await stored(mid)).accessToken
    t.not(fresh, old)
    const served = await until('instance B to serve the new token', 10_000, async () => {
      const r = await lookup(b, mid)
      return r.statusCode === 200 && tokenOf(r) === fresh ? tokenOf(r) : undefined
    })
    t.equal(served, fresh, 'instance B serves the refreshed token')
    t.equal(refreshes(), count + 1, 'instance B did not refresh by itself')
  })

  await t.test('readiness, metrics, key prefix, nothing on the standalone Redis', async t => {
    for (const inst of [a, b]) {
      const res = await ready(inst)
      t.equal(res.statusCode, 200, why(res))
    }
    // The merchants gauge counts with a SCAN over every master.
    const metrics = await b.app.inject({ url: '/metrics' })
    t.equal(metrics.statusCode, 200)
    t.match(metrics.body, /^cybs_merchants\{status="connected"\} 29$/m, 'cybs_merchants counts the merchants of every master')
    const records: string[] = []
    for (const [i, c] of cluster.clients.entries()) {
      const all = await scanKeys(c)
      t.same(all.filter(k => !k.startsWith(PREFIX)), [], `master ${i + 1}: every key starts with ${PREFIX}`)
      records.push(...all.filter(k => keys.merchantIdOf(k) !== undefined))
      // Besides the records, only rate-limit counters: states were consumed, locks released.
      t.same(all.filter(k => keys.merchantIdOf(k) === undefined && !k.startsWith(keys.rateLimit)), [], `master ${i + 1}: no other keys`)
    }
    const expected = [...merchants.filter(m => !perNode.includes(m)), 'm_topo_lock', 'm_topo_pubsub']
    t.same(records.map(k => keys.merchantIdOf(k)).sort(), expected.sort(), 'the cluster holds exactly the remaining merchants')
    const direct = adminClient(t, standalone.port)
    t.equal(await direct.dbsize(), 0, 'the standalone Redis of REDIS_URL stayed empty')
    for (const [i, inst] of [a, b].entries()) {
      t.same(inst.logs.lines().filter(l => Number(l.level) >= 40).map(l => l.msg), [], `instance ${i + 1} logged no warning or error`)
    }
  })
})

t.test('Redis Sentinel: master, replica, one sentinel', async t => {
  const sen = await startSentinel(t, 'mymaster')
  const standalone = await startRedis(t)
  const env = { REDIS_SENTINELS: `${HOST}:${sen.sentinel.port}`, REDIS_SENTINEL_NAME: sen.name, REDIS_KEY_PREFIX: PREFIX, RATE_LIMIT_MAX: '100000' }
  const a = await build(t, { env, redis: standalone })
  const b = await build(t, { env, redis: standalone, simulator: a.sim, secrets: a.secrets })
  t.same(a.config.redis, { mode: 'sentinel', sentinels: [{ host: HOST, port: sen.sentinel.port }], name: sen.name }, 'REDIS_SENTINELS takes precedence over REDIS_URL')
  const keys = createRedisKeys(PREFIX)
  const subscribers = async (c: Redis): Promise<number> => Number((await c.call('PUBSUB', 'NUMSUB', keys.events) as [string, number])[1])
  const keyRing = createKeyRing(a.config.encryptionKeys)
  const storeOn = (c: Redis): TokenStore => createTokenStore(c, keyRing, keys)
  const merchants = ['m_sen_1', 'm_sen_2', 'm_sen_3']
  let refreshed = ''

  await t.test('onboarding, lookup, forced refresh, list, readiness', async t => {
    for (const mid of merchants) t.equal((await onboard(a, mid)).statusCode, 200, `onboarded ${mid}`)
    const masterStore = storeOn(sen.masterClient)
    for (const mid of merchants) t.ok(await masterStore.get(mid), `${mid} is stored on the master`)

    const rec = await masterStore.get('m_sen_1')
    const res = await lookup(a, 'm_sen_1')
    t.equal(res.statusCode, 200, why(res))
    t.equal(tokenOf(res), rec?.accessToken, 'the stored token is served')

    const count = a.sim.control.stats().refreshes
    const forced = await forceRefresh(a, 'm_sen_1')
    t.equal(forced.statusCode, 200, why(forced))
    t.equal(a.sim.control.stats().refreshes, count + 1, 'one refresh at CyberSource')
    const after = await masterStore.get('m_sen_1')
    t.equal(after?.version, (rec?.version ?? 0) + 1, 'version moved by one')
    refreshed = after?.accessToken ?? ''
    t.not(refreshed, rec?.accessToken, 'a new token is stored')
    t.equal(tokenOf(await lookup(a, 'm_sen_1')), refreshed)

    assertEachOnce(t, await walkList(t, [a, b], 2), merchants, 'limit 2')
    for (const inst of [a, b]) t.equal((await ready(inst)).statusCode, 200)
    t.same((await scanKeys(sen.masterClient)).filter(k => !k.startsWith(PREFIX)), [], `every key starts with ${PREFIX}`)
    t.equal(await adminClient(t, standalone.port).dbsize(), 0, 'the standalone Redis of REDIS_URL stayed empty')
  })

  await t.test('failover: the master dies, the sentinel promotes the replica, the service recovers', async t => {
    // Writes acknowledged by the replica survive the failover: wait until it has processed
    // everything the master holds (the WAIT guarantee, checked through replication offsets).
    const offset = Number(infoField(await sen.masterClient.info('replication'), 'master_repl_offset'))
    await until('the replica to catch up with the master', 20_000, async () =>
      Number(infoField(await sen.replicaClient.info('replication'), 'slave_repl_offset')) >= offset ? true : undefined)
    t.same(await sen.masterAddr(), { host: HOST, port: sen.master.port }, 'the sentinel names the original master')
    // Both instances have m_sen_3's token cached.
    const cached = tokenOf(await lookup(a, 'm_sen_3'))
    t.equal(tokenOf(await lookup(b, 'm_sen_3')), cached)

    const killedAt = Date.now()
    await sen.master.kill()
    const promoted = await until('the sentinel to promote the replica', 45_000, async () => {
      const addr = await sen.masterAddr()
      return addr.port === sen.replica.port ? addr : undefined
    }, 200)
    t.same(promoted, { host: HOST, port: sen.replica.port }, 'the replica is the new master')
    t.equal(infoField(await sen.replicaClient.info('replication'), 'role'), 'master')

    // Status reads Redis on every call (no cache): a 200 means the service reached the new master.
    const recovered = await until('the service to answer from the new master', 30_000, async () => {
      const res = await status(a, 'm_sen_1')
      return res.statusCode === 200 ? res : undefined
    }, 200)
    t.comment(`service answered ${Date.now() - killedAt} ms after the master was killed`)
    t.equal(recovered.json().status, 'connected', 'data written before the failover is there')
    t.ok(recovered.json().last_refreshed_at !== null, 'including the forced refresh')
    for (const inst of [a, b]) {
      const res = await until('readiness', 10_000, async () => { const r = await ready(inst); return r.statusCode === 200 ? r : undefined })
      t.equal(res.statusCode, 200, 'ready again')
    }

    // Writes go to the new master: a forced refresh (Lua CAS) and a new onboarding.
    const newMasterStore = storeOn(sen.replicaClient)
    const before = await newMasterStore.get('m_sen_2')
    const forced = await forceRefresh(a, 'm_sen_2')
    t.equal(forced.statusCode, 200, why(forced))
    const after = await newMasterStore.get('m_sen_2')
    t.equal(after?.version, (before?.version ?? 0) + 1, 'the refresh was written to the new master')
    const res = await lookup(a, 'm_sen_2')
    t.equal(res.statusCode, 200, why(res))
    t.equal(tokenOf(res), after?.accessToken)
    t.equal((await onboard(a, 'm_sen_4')).statusCode, 200, 'onboarding after the failover')
    t.ok(await newMasterStore.get('m_sen_4'), 'stored on the new master')
    assertEachOnce(t, await walkList(t, [a, b], 3), [...merchants, 'm_sen_4'], 'after the failover')
    for (const [i, inst] of [a, b].entries()) {
      const msgs = inst.logs.lines().map(l => l.msg)
      t.ok(msgs.indexOf('redis connection restored') > msgs.indexOf('redis connection error') && msgs.includes('redis connection error'), `instance ${i + 1} logged the outage and the recovery`)
    }

    // The subscribers found the new master and subscribed again: B serves the token A refreshed.
    await until('both instances to subscribe on the new master', 20_000, async () => await subscribers(sen.replicaClient) >= 2 ? true : undefined)
    const count = a.sim.control.stats().refreshes
    t.equal((await forceRefresh(a, 'm_sen_3')).statusCode, 200)
    const fresh = (await newMasterStore.get('m_sen_3'))?.accessToken
    t.not(fresh, cached)
    const served = await until('instance B to serve the new token', 10_000, async () => {
      const r = await lookup(b, 'm_sen_3')
      return r.statusCode === 200 && tokenOf(r) === fresh ? tokenOf(r) : undefined
    })
    t.equal(served, fresh, 'instance B serves the token instance A refreshed')
    t.equal(a.sim.control.stats().refreshes, count + 1, 'instance B did not refresh by itself')
  })
})
