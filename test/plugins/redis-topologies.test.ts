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
//
// Passwords and TLS (docs/configuration.md#redis): a Sentinel deployment whose data nodes and
// sentinel each require a password (and have ACL users), a Cluster whose nodes require one and
// also serve TLS, a standalone Redis over TLS, and a Sentinel deployment over TLS. Through each,
// the service onboards a merchant, serves its token and subscribes (the subscriber connection
// authenticates too). Without the password, with a wrong one, or without the CA, it stays
// unready, and its log says why without ever holding the password.
import { randomBytes } from 'node:crypto'
import t, { type Test } from 'tap'
import { Cluster, type Redis } from 'ioredis'
import { build, envFor, onboard, secrets, startSimulator, type Built } from '../helper.js'
import { testCerts } from '../helpers/certs.js'
import { scanKeys, startRedis, type TestRedis } from '../helpers/redis.js'
import { HOST, adminClient, infoField, launchRedis, servicePort, startCluster, startSentinel, until, type TlsFiles } from '../helpers/redis-topologies.js'
import { createKeyRing } from '../../src/key-ring.js'
import { loadConfig } from '../../src/config.js'
import { createRedisClient, redisErrorReason } from '../../src/redis-client.js'
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
      const mine = all.filter(k => keys.merchantIdOf(k) !== undefined)
      records.push(...mine)
      // Besides the records (metadata hash and tokens key) and their slots' counters: rate-limit
      // and state-cap counters, the outcomes of used states, the keep-alive schedule and the event stream.
      // States were consumed, locks released.
      const kept = [keys.rateLimit, keys.stateQuota, `${PREFIX}state-outcome:`, keys.keepAliveKey(''), keys.eventKey(''), keys.merchantCounts('').slice(0, -2)]
      const own = (k: string): boolean => keys.merchantIdOf(k) !== undefined || mine.includes(k.slice(0, -':tokens'.length)) || kept.some(p => k.startsWith(p))
      t.same(all.filter(k => !own(k)), [], `master ${i + 1}: no other keys`)
      t.same(mine.filter(r => !all.includes(`${r}:tokens`)), [], `master ${i + 1}: every record has its tokens key beside it`)
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
  const sen = await startSentinel(t, { name: 'mymaster' })
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

// ---- Passwords and TLS ----

const password = (what: string): string => `${what}-${randomBytes(12).toString('hex')}`

/** The test CA, server certificate and key as the redis-server TLS options take them. */
function tlsFiles (): TlsFiles {
  const certs = testCerts()
  return { certFile: certs.server.certFile, keyFile: certs.server.keyFile, caFile: certs.ca.certFile, clientCertFile: certs.client.certFile, clientKeyFile: certs.client.keyFile }
}

let serial = 0
/** A key prefix per service, so that its subscriber is the only one on its events channel. */
const ownPrefix = (): string => `auth${++serial}:`

const eventSubscribers = async (clients: Redis[], channel: string): Promise<number> => {
  let n = 0
  for (const c of clients) n += Number((await c.call('PUBSUB', 'NUMSUB', channel) as [string, number])[1])
  return n
}

/** The service's token store, seen through the test's own connection. */
const storeOf = (b: Built, redis: Redis | Cluster): TokenStore =>
  createTokenStore(redis, createKeyRing(b.config.encryptionKeys), createRedisKeys(b.config.redisKeyPrefix))

/**
 * Onboards `mid` through the instance, checks that it serves the token stored in Redis (read
 * through `redis`), that it is ready, and that its subscriber connection subscribed (on `nodes`).
 */
async function servesThrough (t: Test, b: Built, mid: string, redis: Redis | Cluster, nodes: Redis[]): Promise<void> {
  const store = storeOf(b, redis)
  const channel = createRedisKeys(b.config.redisKeyPrefix).events
  t.equal((await onboard(b, mid)).statusCode, 200, `onboarded ${mid}`)
  const rec = await store.get(mid)
  t.ok(rec !== undefined, `${mid} is stored in the deployment`)
  const res = await lookup(b, mid)
  t.equal(res.statusCode, 200, why(res))
  t.ok(res.statusCode === 200 && tokenOf(res) === rec?.accessToken, `${mid}: the stored token is served`)
  // Polled: on a busy machine readiness may report event-loop pressure for a moment; Redis must answer it.
  const r = await until('readiness', 5000, async () => { const r = await ready(b); return r.statusCode === 200 ? r : undefined }).catch(async () => await ready(b))
  t.equal(r.statusCode, 200, `ready: ${why(r)}`)
  t.ok(await until('the subscriber connection to subscribe', 10_000, async () => await eventSubscribers(nodes, channel) === 1 ? true : undefined), 'the subscriber connection subscribed')
  t.same(b.logs.lines().filter(l => Number(l.level) >= 40).map(l => l.msg), [], 'no warning or error logged')
}

/** A service that cannot authenticate (or verify the server): unready, lookups 503, the reason in its log, no password anywhere in it. */
async function staysUnready (t: Test, b: Built, reason: RegExp, passwords: string[]): Promise<void> {
  const res = await ready(b)
  t.equal(res.statusCode, 503, 'readiness 503')
  t.equal((await lookup(b, 'm_unreachable')).statusCode, 503, 'a lookup answers 503')
  const lines = b.logs.lines()
  t.ok(lines.some(l => l.msg === 'redis is not reachable; starting degraded'), 'logged that it starts degraded')
  const error = lines.find(l => l.msg === 'redis connection error')
  t.match(String(error?.reason), reason, `the log says why (${String(error?.reason)})`)
  const text = b.logs.text()
  t.same(passwords.filter(p => text.includes(p)), [], 'no password in the log')
}

t.test('the options given to ioredis', async t => {
  // lazyConnect: the clients are only built, never connected.
  const cfg = (env: Record<string, string>): ReturnType<typeof loadConfig>['redis'] => loadConfig(envFor(secrets(), 'redis://127.0.0.1:1', 'http://127.0.0.1:1', env)).redis
  const ca = testCerts().ca
  const sentinelPassword = password('sentinel')
  const dataPassword = password('data')
  const sentinel = createRedisClient(cfg({
    REDIS_SENTINELS: '127.0.0.1:1',
    REDIS_SENTINEL_NAME: 'mymaster',
    REDIS_USERNAME: 'broker',
    REDIS_PASSWORD: dataPassword,
    REDIS_SENTINEL_USERNAME: 'watcher',
    REDIS_SENTINEL_PASSWORD: sentinelPassword,
    REDIS_TLS: 'true',
    REDIS_CA_FILE: ca.certFile
  }), { lazyConnect: true }) as Redis
  t.teardown(() => { sentinel.disconnect() })
  // Passwords compared by equality only, so a failure does not print them.
  const o = sentinel.options
  t.match(o, { name: 'mymaster', username: 'broker', sentinelUsername: 'watcher', enableTLSForSentinelMode: true })
  t.ok(o.password === dataPassword, 'password: the data nodes\'')
  t.ok(o.sentinelPassword === sentinelPassword, 'sentinelPassword: the sentinels\'')
  t.ok(o.tls?.secureContext !== undefined && o.sentinelTLS === o.tls, 'TLS with the CA to the data nodes and to the sentinels')
  t.match(o, { commandTimeout: 1000, enableOfflineQueue: false, maxRetriesPerRequest: 1 }, 'the request-path options stay')
  const sub = sentinel.duplicate()
  t.teardown(() => { sub.disconnect() })
  t.ok(sub.options.password === dataPassword && sub.options.sentinelPassword === sentinelPassword && sub.options.username === 'broker', 'a duplicate (the subscriber) authenticates the same')
  t.ok(sub.options.enableTLSForSentinelMode === true && sub.options.tls === o.tls, 'and uses the same TLS')

  const plainSentinel = createRedisClient(cfg({ REDIS_SENTINELS: '127.0.0.1:1', REDIS_SENTINEL_NAME: 'mymaster', REDIS_PASSWORD: dataPassword }), { lazyConnect: true }) as Redis
  t.teardown(() => { plainSentinel.disconnect() })
  t.equal(plainSentinel.options.tls, undefined, 'no TLS without REDIS_TLS')
  t.notOk(plainSentinel.options.enableTLSForSentinelMode)
  t.equal(plainSentinel.options.sentinelPassword, undefined)

  const cluster = createRedisClient(cfg({ REDIS_CLUSTER_NODES: '127.0.0.1:1', REDIS_PASSWORD: dataPassword, REDIS_TLS: 'true' }), { lazyConnect: true }) as Cluster
  t.teardown(() => { cluster.disconnect() })
  t.ok(cluster.options.redisOptions?.password === dataPassword, 'every cluster node connection authenticates')
  t.match(cluster.options.redisOptions, { tls: {}, commandTimeout: 1000 }, 'over TLS, with the request-path options')
  const clusterSub = cluster.duplicate(undefined, { lazyConnect: true })
  t.teardown(() => { clusterSub.disconnect() })
  t.ok(clusterSub.options.redisOptions === cluster.options.redisOptions, 'a duplicate (the subscriber) too')
  t.equal(cluster.options.enableOfflineQueue, false)
})

t.test('Redis Sentinel with passwords: data nodes (requirepass, masterauth, an ACL user) and the sentinel', async t => {
  const dataPassword = password('data')
  const brokerPassword = password('broker')
  const sentinelPassword = password('sentinel')
  const watcherPassword = password('watcher')
  const all = [dataPassword, brokerPassword, sentinelPassword, watcherPassword]
  const sen = await startSentinel(t, {
    data: { password: dataPassword, user: { name: 'broker', password: brokerPassword } },
    sentinel: { password: sentinelPassword, user: { name: 'watcher', password: watcherPassword } }
  })
  const standalone = await startRedis(t)
  const s = secrets()
  const sim = await startSimulator(t, { clientSecret: s.clientSecret })
  const common = { REDIS_SENTINELS: `${HOST}:${sen.sentinel.port}`, REDIS_SENTINEL_NAME: sen.name }
  const service = async (env: Record<string, string>): Promise<Built> => await build(t, { env: { ...common, REDIS_KEY_PREFIX: ownPrefix(), ...env }, redis: standalone, simulator: sim, secrets: s })

  t.test('a sentinel without a password refuses the test\'s own client', async t => {
    const anonymous = adminClient(t, sen.sentinel.port)
    await t.rejects(anonymous.call('SENTINEL', 'get-master-addr-by-name', sen.name), /NOAUTH/)
    await t.rejects(adminClient(t, sen.master.port).ping(), /NOAUTH/, 'and so does the master')
  })

  t.test('default users: REDIS_PASSWORD and REDIS_SENTINEL_PASSWORD', async t => {
    const b = await service({ REDIS_PASSWORD: dataPassword, REDIS_SENTINEL_PASSWORD: sentinelPassword })
    t.same(b.config.redis, { mode: 'sentinel', sentinels: [{ host: HOST, port: sen.sentinel.port }], name: sen.name, password: dataPassword, sentinelPassword })
    await servesThrough(t, b, 'm_auth_sen_1', sen.masterClient, [sen.masterClient])
  })

  t.test('ACL users: REDIS_USERNAME and REDIS_SENTINEL_USERNAME', async t => {
    const b = await service({ REDIS_USERNAME: 'broker', REDIS_PASSWORD: brokerPassword, REDIS_SENTINEL_USERNAME: 'watcher', REDIS_SENTINEL_PASSWORD: watcherPassword })
    await servesThrough(t, b, 'm_auth_sen_2', sen.masterClient, [sen.masterClient])
    const clients = String(await sen.masterClient.call('CLIENT', 'LIST'))
    t.match(clients, /\buser=broker\b/, 'the master sees connections of the ACL user')
  })

  t.test('without a password, or with a wrong one: unready, and the log says why', async t => {
    const [noSentinelPassword, wrongData, noData] = await Promise.all([
      service({ REDIS_PASSWORD: dataPassword }),
      service({ REDIS_PASSWORD: password('wrong'), REDIS_SENTINEL_PASSWORD: sentinelPassword }),
      service({ REDIS_SENTINEL_PASSWORD: sentinelPassword })
    ])
    await t.test('no REDIS_SENTINEL_PASSWORD', async t => { await staysUnready(t, noSentinelPassword, /NOAUTH/, all) })
    await t.test('a wrong REDIS_PASSWORD', async t => { await staysUnready(t, wrongData, /WRONGPASS/, all) })
    await t.test('no REDIS_PASSWORD', async t => { await staysUnready(t, noData, /NOAUTH/, all) })
  })
})

t.test('Redis Cluster with a password, over plain TCP and over TLS', async t => {
  const clusterPassword = password('cluster')
  const cluster = await startCluster(t, 3, { password: clusterPassword, tls: tlsFiles() })
  const standalone = await startRedis(t)
  const s = secrets()
  const sim = await startSimulator(t, { clientSecret: s.clientSecret })
  const service = async (env: Record<string, string>): Promise<Built> => await build(t, { env: { REDIS_KEY_PREFIX: ownPrefix(), ...env }, redis: standalone, simulator: sim, secrets: s })
  const inspect = new Cluster(cluster.nodes.map(n => ({ host: HOST, port: n.port })), { redisOptions: { password: clusterPassword, maxRetriesPerRequest: 1 } })
  inspect.on('error', () => {})
  t.teardown(() => { inspect.disconnect() })
  const tlsEnv = { REDIS_CLUSTER_NODES: cluster.tlsSpec ?? '', REDIS_TLS: 'true', REDIS_CA_FILE: testCerts().ca.certFile }

  t.test('REDIS_PASSWORD', async t => {
    const b = await service({ REDIS_CLUSTER_NODES: cluster.spec, REDIS_PASSWORD: clusterPassword })
    await servesThrough(t, b, 'm_auth_cl_1', inspect, cluster.clients)
  })

  t.test('REDIS_TLS with REDIS_CA_FILE, on the TLS ports: merchants on every node', async t => {
    const b = await service({ ...tlsEnv, REDIS_PASSWORD: clusterPassword })
    t.same(b.config.redis.tls, { ca: testCerts().ca.cert })
    await servesThrough(t, b, 'm_auth_cl_tls', inspect, cluster.clients)
    const keys = createRedisKeys(b.config.redisKeyPrefix)
    const store = storeOf(b, inspect)
    // Enough merchants for every master to hold one: each node was reached over TLS (slots and MOVED name TLS ports).
    const mids = Array.from({ length: 12 }, (_, i) => `m_tls_${i}`)
    for (const mid of mids) t.equal((await onboard(b, mid)).statusCode, 200, `onboarded ${mid}`)
    for (const [i, c] of cluster.clients.entries()) {
      t.ok((await scanKeys(c, keys.merchantPattern)).length > 0, `master ${i + 1} holds merchant records`)
    }
    for (const mid of mids) {
      const res = await lookup(b, mid)
      t.ok(res.statusCode === 200 && tokenOf(res) === (await store.get(mid))?.accessToken, `${mid}: the stored token is served`)
    }
  })

  t.test('redisErrorReason names the node\'s error behind "Failed to refresh slots cache."', async t => {
    const reasonOf = async (cfg: { password?: string }): Promise<string> => {
      const client = createRedisClient({ mode: 'cluster', nodes: cluster.nodes.map(n => ({ host: HOST, port: n.port })), ...cfg })
      t.teardown(() => { client.disconnect() })
      return redisErrorReason(await new Promise<Error>(resolve => client.once('error', resolve)))
    }
    t.match(await reasonOf({}), /^Failed to refresh slots cache\. \(NOAUTH/, 'no password')
    t.match(await reasonOf({ password: password('wrong') }), /^Failed to refresh slots cache\. \(WRONGPASS/, 'a wrong password')
  })

  t.test('without the password, with a wrong one, or TLS without the CA: unready, and the log says why', async t => {
    const [noPassword, wrongPassword, noCa] = await Promise.all([
      service({ REDIS_CLUSTER_NODES: cluster.spec }),
      service({ ...tlsEnv, REDIS_PASSWORD: password('wrong') }),
      service({ REDIS_CLUSTER_NODES: cluster.tlsSpec ?? '', REDIS_TLS: 'true', REDIS_PASSWORD: clusterPassword })
    ])
    await t.test('no REDIS_PASSWORD', async t => { await staysUnready(t, noPassword, /NOAUTH|Authentication/, [clusterPassword]) })
    await t.test('a wrong REDIS_PASSWORD', async t => { await staysUnready(t, wrongPassword, /WRONGPASS/, [clusterPassword]) })
    // ioredis gives the slots refresh "Connection is closed." as the node's error here, not the certificate's code.
    await t.test('no REDIS_CA_FILE', async t => { await staysUnready(t, noCa, /Failed to refresh slots cache/, [clusterPassword]) })
  })
})

t.test('standalone Redis over TLS (rediss://) with a password in the URL', async t => {
  const urlPassword = password('standalone')
  const server = await launchRedis(t, { label: 'tls', args: ['--save', '', '--appendonly', 'no', '--requirepass', urlPassword], tls: tlsFiles() })
  const admin = adminClient(t, server.port, urlPassword)
  const standalone: TestRedis = await startRedis(t)
  const s = secrets()
  const sim = await startSimulator(t, { clientSecret: s.clientSecret })
  const url = `rediss://:${urlPassword}@${HOST}:${servicePort(server)}`
  const service = async (env: Record<string, string>): Promise<Built> => await build(t, { env: { REDIS_KEY_PREFIX: ownPrefix(), ...env }, redis: standalone, simulator: sim, secrets: s })

  t.test('REDIS_CA_FILE: onboarding and lookup over TLS', async t => {
    const b = await service({ REDIS_URL: url, REDIS_CA_FILE: testCerts().ca.certFile })
    await servesThrough(t, b, 'm_tls_standalone', admin, [admin])
  })

  t.test('REDIS_PASSWORD beside a URL without credentials', async t => {
    const b = await service({ REDIS_URL: `rediss://${HOST}:${servicePort(server)}`, REDIS_PASSWORD: urlPassword, REDIS_CA_FILE: testCerts().ca.certFile })
    await servesThrough(t, b, 'm_tls_standalone_2', admin, [admin])
  })

  t.test('without the CA (or over plain TCP to the TLS port): unready, and the log says why', async t => {
    const [noCa, plain] = await Promise.all([
      service({ REDIS_URL: url }),
      service({ REDIS_URL: url.replace('rediss://', 'redis://') })
    ])
    await t.test('no REDIS_CA_FILE', async t => { await staysUnready(t, noCa, /CERT|certificate/i, [urlPassword]) })
    await t.test('redis:// to the TLS port', async t => { await staysUnready(t, plain, /./, [urlPassword]) })
  })
})

t.test('Redis Sentinel over TLS, with passwords', async t => {
  const dataPassword = password('data')
  const sentinelPassword = password('sentinel')
  const sen = await startSentinel(t, { data: { password: dataPassword, tls: tlsFiles() }, sentinel: { password: sentinelPassword } })
  const standalone = await startRedis(t)
  const s = secrets()
  const sim = await startSimulator(t, { clientSecret: s.clientSecret })
  t.same(await sen.masterAddr(), { host: HOST, port: servicePort(sen.master) }, 'the sentinel names the master\'s TLS port')
  const env = {
    REDIS_SENTINELS: `${HOST}:${servicePort(sen.sentinel)}`,
    REDIS_SENTINEL_NAME: sen.name,
    REDIS_PASSWORD: dataPassword,
    REDIS_SENTINEL_PASSWORD: sentinelPassword,
    REDIS_TLS: 'true',
    REDIS_CA_FILE: testCerts().ca.certFile,
    REDIS_KEY_PREFIX: ownPrefix()
  }
  const b = await build(t, { env, redis: standalone, simulator: sim, secrets: s })
  await servesThrough(t, b, 'm_tls_sen', sen.masterClient, [sen.masterClient])
})
