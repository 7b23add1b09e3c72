// The token store against a private Redis: encrypted round trip and the Redis layout (metadata
// hash, binary tokens key), compare-and-set versions, TTL of every key, reauthorization marking,
// delete, and SCAN-based pagination reading metadata only.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import type { Redis } from 'ioredis'
import { startRedis, type TestRedis, withRedisStopped, scanKeys } from '../helpers/redis.js'
import { createRedisClient, waitReady } from '../../src/redis-client.js'
import { createRedisKeys } from '../../src/redis-keys.js'
import { createKeyRing, KeyRingError } from '../../src/key-ring.js'
import { META_FIELDS, decodeTokens } from '../../src/record-codec.js'
import { createTokenStore, RECORD_GRACE_MS, type TokenStore } from '../../src/token-store.js'
import { InvalidRequestError, StorageUnavailableError } from '../../src/errors.js'
import { HOUR, newRecord } from '../helpers/records.js'

type Tap = Parameters<Parameters<typeof t.test>[0]>[0]

const PREFIX = 'ts:'
const keys = createRedisKeys(PREFIX)
const ring = createKeyRing([{ kid: 'k1', key: randomBytes(32) }])

async function setup (t: Tap): Promise<{ server: TestRedis, redis: Redis, store: TokenStore }> {
  const server = await startRedis(t)
  const redis = createRedisClient({ mode: 'standalone', url: server.url }) as Redis
  redis.on('error', () => {})
  t.teardown(() => { redis.disconnect() })
  if (!await waitReady(redis, 5000)) throw new Error('redis did not become ready')
  return { server, redis, store: createTokenStore(redis, ring, keys) }
}

const record = newRecord

/**
 * Runs fn while the server is stopped and starts it again whatever happens: the redis helper's
 * teardown cannot stop a server that was already killed (it waits for an exit that never comes).
 */

t.test('put and get: encrypted round trip', async t => {
  const { redis, store } = await setup(t)
  t.equal(await store.get('m_1'), undefined, 'unknown merchant: undefined')
  t.equal(await store.getMeta('m_1'), undefined)
  const r = record('m_1', { lastRefreshedAt: Date.now() - 1000 })
  t.equal(await store.put(r), 1, 'first version is 1')
  const got = await store.get('m_1')
  const grant = got?.grant ?? ''
  t.match(grant, /^[A-Za-z0-9_-]{16}$/, 'a grant id')
  t.same(got, { ...r, version: 1, grant }, 'every field comes back')
  const meta = await store.getMeta('m_1')
  const { accessToken: _a, refreshToken: _r, ...metadata } = r
  t.same(meta, { ...metadata, version: 1, grant }, 'metadata without tokens')
  t.notOk(meta !== undefined && ('accessToken' in meta || 'refreshToken' in meta), 'getMeta carries no token')

  const nullRefresh = record('m_null')
  await store.put(nullRefresh)
  t.equal((await store.get('m_null'))?.lastRefreshedAt, null, 'lastRefreshedAt null survives')

  t.same(await scanKeys(redis).then(k => k.sort()), [keys.merchant('m_1'), keys.merchantTokens('m_1'), keys.merchant('m_null'), keys.merchantTokens('m_null'), keys.merchantCounts()].sort(),
    'a metadata hash and a tokens key per merchant, and the counters, under the prefix')
  const hash = await redis.hgetall(keys.merchant('m_1'))
  t.same(Object.keys(hash).sort(), [...META_FIELDS].sort(), 'the hash holds the metadata only')
  t.equal(await redis.call('OBJECT', 'ENCODING', keys.merchant('m_1')), 'listpack', 'in Redis\'s compact encoding')
  const blob = await redis.getBuffer(keys.merchantTokens('m_1'))
  if (blob === null) throw new Error('no tokens key')
  for (const secret of [r.accessToken, r.refreshToken, r.accessToken.split('.')[1], r.refreshToken.split('.')[2]]) {
    t.notOk(JSON.stringify(hash).includes(secret) || blob.includes(secret) || blob.toString('latin1').includes(secret), 'no token or token segment in plaintext')
  }
  const raw = r.accessToken.length + r.refreshToken.length
  // Binary ciphertext: the tokens, their split, the key id, one IV and one tag (base64 would add a third).
  t.ok(blob.length <= raw + 64, `the tokens key holds ${blob.length} bytes for ${raw} bytes of tokens`)
  t.same(decodeTokens(ring, 'm_1', blob), { accessToken: r.accessToken, refreshToken: r.refreshToken }, 'the tokens key is the key ring\'s envelope, as bytes')
  t.throws(() => decodeTokens(ring, 'm_null', blob), KeyRingError, 'bound to its merchant')
})

t.test('put with an expected version and grant is compare-and-set', async t => {
  const { store } = await setup(t)
  const r1 = record('m_cas')
  t.equal(await store.put(r1), 1)
  const grant = (await store.getMeta('m_cas'))?.grant ?? ''
  t.match(grant, /^[A-Za-z0-9_-]{16}$/, 'a new onboarding gets a random grant id')
  const at = (version: number): { version: number, grant: string } => ({ version, grant })
  const r2 = record('m_cas', { lastRefreshedAt: Date.now() })
  t.equal(await store.put(r2, at(1)), 2, 'the expected version matches: written, version 2')
  t.equal((await store.getMeta('m_cas'))?.grant, grant, 'a compare-and-set write keeps the grant')
  t.equal(await store.put(record('m_cas'), { version: 2, grant: 'another-grant-id' }), undefined, 'the version matches but not the grant: not written')
  const stale = record('m_cas')
  t.equal(await store.put(stale, at(1)), undefined, 'a stale expected version: not written')
  const now = await store.get('m_cas')
  t.equal(now?.version, 2, 'version unchanged')
  t.equal(now?.accessToken, r2.accessToken, 'the newer pair is kept')
  t.equal(now?.refreshToken, r2.refreshToken)
  t.equal(await store.put(record('m_cas'), at(3)), undefined, 'a future version: not written')
  t.equal(await store.put(record('m_cas'), at(0)), undefined, 'version 0: not written')
  t.equal((await store.get('m_cas'))?.accessToken, r2.accessToken)
  const r3 = record('m_cas')
  t.equal(await store.put(r3), 3, 'an unconditional put (a new onboarding) still increments')
  const newGrant = (await store.getMeta('m_cas'))?.grant
  t.not(newGrant, grant, 'and starts a new grant')
  t.equal((await store.get('m_cas'))?.accessToken, r3.accessToken)
  t.equal(await store.put(record('m_cas'), at(3)), undefined, 'the old grant no longer writes')
  t.equal(await store.put(record('m_none'), at(1)), undefined, 'expected version on a missing record: not written')
  t.equal(await store.get('m_none'), undefined, 'and nothing created')

  // Two writers racing from the same version: exactly one wins.
  const results = await Promise.all(Array.from({ length: 20 }, async () => await store.put(record('m_cas'), { version: 3, grant: newGrant ?? '' })))
  t.equal(results.filter(v => v === 4).length, 1, 'one of 20 concurrent CAS writes wins')
  t.equal(results.filter(v => v === undefined).length, 19)
})

t.test('a new onboarding never replaces a later one (a slow or retried write of an older exchange)', async t => {
  const { store } = await setup(t)
  const at = Date.now()
  t.ok(await store.put(newRecord('m_race', { connectedAt: at, accessToken: 'newer-access' })), 'the later onboarding is stored')
  t.equal(await store.put(newRecord('m_race', { connectedAt: at - 5000, accessToken: 'older-access' })), undefined, 'the older one is refused')
  t.equal((await store.get('m_race'))?.accessToken, 'newer-access', 'the later pair stays')
  t.ok(await store.put(newRecord('m_race', { connectedAt: at, accessToken: 'same-again' })), 'a retry of the same write goes through')
})

t.test('the record lives until the refresh token expires plus RECORD_GRACE_MS', async t => {
  const { redis, store } = await setup(t)
  for (const lifetime of [HOUR, 365 * 24 * HOUR, -HOUR]) {
    const expiresAt = Date.now() + lifetime
    await store.put(record('m_ttl', { refreshTokenExpiresAt: expiresAt }))
    const before = Date.now()
    for (const key of [keys.merchant('m_ttl'), keys.merchantTokens('m_ttl')]) {
      const pttl = await redis.pttl(key)
      // Redis and Node clocks round differently: a few ms of slack above, seconds below.
      const expected = expiresAt + RECORD_GRACE_MS - before
      t.ok(pttl <= expected + 5 && pttl > expected - 5000, `${key}, refresh token ${lifetime / HOUR} h: PTTL ${pttl} ≈ ${expected}`)
    }
    t.equal(await redis.call('PEXPIRETIME', keys.merchant('m_ttl')), await redis.call('PEXPIRETIME', keys.merchantTokens('m_ttl')), 'both keys expire at the same instant')
  }
  const meta = await store.getMeta('m_ttl')
  t.equal(await store.markReauthorizationRequired('m_ttl', { version: 3, grant: meta?.grant ?? '' }), 4)
  t.ok(await redis.pttl(keys.merchant('m_ttl')) > 0, 'marking keeps the expiry')
  t.ok(await redis.pttl(keys.merchantTokens('m_ttl')) > 0, 'of both keys')
})

t.test('markReauthorizationRequired is compare-and-set and keeps the tokens', async t => {
  const { store } = await setup(t)
  const r = record('m_re')
  await store.put(r)
  const grant = (await store.getMeta('m_re'))?.grant ?? ''
  t.equal(await store.markReauthorizationRequired('m_re', { version: 2, grant }), undefined, 'stale version: not marked')
  t.equal(await store.markReauthorizationRequired('m_re', { version: 1, grant: 'another-grant-id' }), undefined, 'another grant: not marked')
  t.equal((await store.getMeta('m_re'))?.status, 'connected')
  t.equal(await store.markReauthorizationRequired('m_re', { version: 1, grant }), 2, 'current version and grant: marked, version 2')
  const got = await store.get('m_re')
  t.equal(got?.status, 'reauthorization_required')
  t.equal(got?.accessToken, r.accessToken, 'tokens kept')
  t.equal(got?.refreshToken, r.refreshToken)
  t.equal(await store.markReauthorizationRequired('m_re', { version: 1, grant }), undefined, 'the old version no longer matches')
  t.equal(await store.markReauthorizationRequired('m_missing', { version: 1, grant: '' }), undefined, 'missing merchant: undefined')
  t.equal(await store.get('m_missing'), undefined, 'and nothing created')
  t.equal(await store.put(record('m_re')), 3, 'a new onboarding over it')
  t.equal((await store.getMeta('m_re'))?.status, 'connected')
})

t.test('delete removes the record and the lock key', async t => {
  const { redis, store } = await setup(t)
  await store.put(record('m_del'))
  await store.put(record('m_keep'))
  await redis.set(keys.lock('m_del'), 'owner', 'PX', 60_000)
  await redis.set(keys.lock('m_keep'), 'owner', 'PX', 60_000)
  t.equal(await store.delete('m_del'), true)
  t.equal(await redis.exists(keys.merchant('m_del')), 0, 'record gone')
  t.equal(await redis.exists(keys.merchantTokens('m_del')), 0, 'tokens gone')
  t.equal(await redis.exists(keys.lock('m_del')), 0, 'lock gone')
  t.equal(await store.get('m_del'), undefined)
  t.equal(await store.delete('m_del'), false, 'second delete: false')
  t.equal(await store.delete('m_never'), false, 'unknown merchant: false')
  t.equal(await redis.exists(keys.merchant('m_keep'), keys.merchantTokens('m_keep')), 2, 'other merchant untouched')
  t.equal(await redis.exists(keys.lock('m_keep')), 1, 'other lock untouched')
  t.same((await scanKeys(redis)).filter(k => k.includes('m_del')), [], 'no key of the deleted merchant is left')
  t.same(await store.countByStatus(), { connected: 1, reauthorization_required: 0 }, 'and it is no longer counted')
  t.equal(await store.delete('m_keep'), true)
  t.same(await scanKeys(redis), [], 'the last delete leaves no key at all (counters at zero are removed)')
})

t.test('list pages through 250 merchants, each exactly once', async t => {
  const { redis, store } = await setup(t)
  const empty = await store.list(100)
  t.same(empty, { items: [], nextCursor: null }, 'empty store: no items, no cursor')

  const ids = Array.from({ length: 250 }, (_, i) => `m_${String(i).padStart(3, '0')}`)
  for (const id of ids) await store.put(record(id))
  // Keys that are not merchant records, or not ours: never listed.
  await redis.set(keys.lock('m_000'), 'x')
  await redis.set(keys.state('s'), 'x')
  await redis.hset('other:merchant:{intruder}', 'version', '1')
  await redis.hset(`${PREFIX}merchantx:{intruder2}`, 'version', '1')

  for (const limit of [100, 7, 250, 500]) {
    const seen: string[] = []
    let cursor: string | undefined
    let pages = 0
    for (;;) {
      const page = await store.list(limit, cursor)
      pages++
      t.ok(page.items.length <= limit, `limit ${limit}: page ${pages} has at most ${limit} items`)
      for (const m of page.items) {
        seen.push(m.merchantId)
        t.notOk('accessToken' in m || 'refreshToken' in m, 'list items carry no token')
      }
      if (page.nextCursor === null) break
      t.type(page.nextCursor, 'string')
      cursor = page.nextCursor
      if (pages > 300) break
    }
    t.equal(seen.length, 250, `limit ${limit}: 250 items in total`)
    t.same([...seen].sort(), ids, `limit ${limit}: every merchant exactly once`)
    t.ok(pages >= Math.ceil(250 / limit), `limit ${limit}: ${pages} pages`)
  }
  // A page reads each merchant's metadata hash and nothing else: no tokens key, no script.
  const stat = async (): Promise<{ out: number, calls: (cmd: string) => number }> => {
    const info = await redis.info('all')
    return {
      out: Number(/^total_net_output_bytes:(\d+)/m.exec(info)?.[1]),
      calls: (cmd) => Number(new RegExp(`^cmdstat_${cmd}:calls=(\\d+)`, 'm').exec(info)?.[1] ?? 0)
    }
  }
  const s0 = await stat()
  t.equal((await store.list(250)).items.length, 250)
  const s1 = await stat()
  for (const cmd of ['get', 'getrange', 'evalsha', 'eval', 'hgetall']) t.equal(s1.calls(cmd), s0.calls(cmd), `listing calls no ${cmd.toUpperCase()}`)
  const perMerchant = (s1.out - s0.out) / 250
  t.ok(perMerchant <= 1200, `listing read ${Math.round(perMerchant)} bytes per merchant (an INFO reply included)`)

  const first = await store.list(100)
  t.equal(first.items.length, 100, 'a full first page')
  t.type(first.nextCursor, 'string', 'with a cursor')
  t.equal(first.items[0].version, 1, 'items carry their metadata')
  t.equal(first.items[0].status, 'connected')
})

t.test('list rejects a cursor it did not make', async t => {
  const { redis, store } = await setup(t)
  for (const id of ['m_1', 'm_2', 'm_3']) await store.put(record(id))
  const b64 = (s: string): string => Buffer.from(s).toString('base64url')
  // Only cursors the store sealed are parsed: well-formed ones it did not make are refused too
  // (a forged SCAN cursor above 2^64 made Redis fail), as are real ones with a changed byte.
  const { nextCursor } = await store.list(1)
  if (nextCursor === null) throw new Error('expected a second page')
  const tampered = nextCursor.slice(0, -2) + (nextCursor.endsWith('AA') ? 'AB' : 'AA')
  const otherRing = createTokenStore(redis, createKeyRing([{ kid: 'other', key: randomBytes(32) }]), keys)
  const foreign = (await otherRing.list(1)).nextCursor ?? 'none'
  const bad = ['garbage', '!!!', '', 'a'.repeat(65), b64('1:0:0'), b64('9999:0:0'), b64('0:abc:0'), b64('0:0'), b64('-1:0:0'), b64('0:0:0:0'), b64(`0:0:${'9'.repeat(7)}`),
    b64('0:0:0'), b64('0:99999999999999999999:0'), `${b64('0:99999999999999999999:0')}.${'A'.repeat(22)}`, tampered, foreign]
  for (const cursor of bad) {
    let caught: unknown
    try {
      await store.list(10, cursor)
    } catch (err) {
      caught = err
    }
    t.ok(caught instanceof InvalidRequestError, `cursor ${JSON.stringify(cursor.slice(0, 20))}: InvalidRequestError`)
  }
  t.equal((await store.list(10, nextCursor)).items.length, 2, 'the cursor the store issued works')
})

t.test('Redis down: every operation fails with StorageUnavailableError', async t => {
  const { server, store } = await setup(t)
  await store.put(record('m_1'))
  await withRedisStopped(server, async () => {
    await t.rejects(store.get('m_1'), StorageUnavailableError)
    await t.rejects(store.getMeta('m_1'), StorageUnavailableError)
    await t.rejects(store.put(record('m_1')), StorageUnavailableError)
    await t.rejects(store.markReauthorizationRequired('m_1', { version: 1, grant: '' }), StorageUnavailableError)
    await t.rejects(store.delete('m_1'), StorageUnavailableError)
    await t.rejects(store.list(10), StorageUnavailableError)
  })
})
