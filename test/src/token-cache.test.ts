// The token cache on its own: bounded (least recently used out, 0 = off), holding access tokens
// only, kept in step by change messages, and revalidated, not dropped, after the subscriber loses
// its connection: entries whose record changed or went away meanwhile are dropped, the others kept
// and served; a record read across the loss is checked too. Real Redis (a private redis-server).
import t, { type Test } from 'tap'
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { getHeapSnapshot, setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { Redis } from 'ioredis'
import { startRedis, type TestRedis } from '../helpers/redis.js'
import { createRedisKeys } from '../../src/redis-keys.js'
import { createSubscriber } from '../../src/redis-client.js'
import { createTokenCache, type TokenCache } from '../../src/token-cache.js'
import { createVersionReads } from '../../src/record-reads.js'
import { REVALIDATION_CHUNK, type ReadVersions } from '../../src/cache-revalidation.js'
import type { MerchantRecord } from '../../src/token-store.js'

/** Polls `predicate` until it holds (true) or `timeoutMs` passed (false); no app needed here. */
async function until (predicate: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (!predicate()) {
    if (Date.now() > deadline) return false
    await sleep(25)
  }
  return true
}

const HOUR = 3600_000
const START = Date.UTC(2030, 0, 1)
const keys = createRedisKeys('cache-test:')

function record (merchantId: string, over: Partial<MerchantRecord> = {}): MerchantRecord {
  return {
    merchantId,
    status: 'connected',
    scope: 'payments',
    clientStatus: 'active',
    connectedAt: START,
    accessTokenExpiresAt: START + 900_000,
    refreshTokenExpiresAt: START + 365 * 24 * HOUR,
    lastRefreshedAt: null,
    version: 1,
    grant: 'g1',
    accessToken: `at-${merchantId}-${over.version ?? 1}`,
    refreshToken: `rt-secret-${merchantId}`,
    ...over
  }
}

t.test('bounded: never more than maxEntries, the least recently used goes first', async t => {
  const cache = createTokenCache({ now: () => START, maxEntries: 3 })
  for (let i = 0; i < 10; i++) {
    cache.remember(record(`m${i}`), cache.ticket())
    t.ok(cache.size() <= 3, `size ${cache.size()} after ${i + 1} merchants`)
  }
  t.equal(cache.size(), 3)
  t.same(['m7', 'm8', 'm9'].map(m => cache.peek(m)?.accessToken), ['at-m7-1', 'at-m8-1', 'at-m9-1'], 'the last three are kept')
  t.equal(cache.entry('m0'), undefined, 'the first ones are gone')
  // m7 was used after m8 (just above, and again now): m8 is the least recently used.
  cache.peek('m7')
  cache.peek('m9')
  cache.remember(record('m10'), cache.ticket())
  t.equal(cache.entry('m8'), undefined, 'the least recently used went')
  t.ok(cache.entry('m7') !== undefined && cache.entry('m9') !== undefined && cache.entry('m10') !== undefined)
  t.equal(cache.size(), 3)
})

t.test('maxEntries 0: nothing is cached, tokens are still made', async t => {
  const cache = createTokenCache({ now: () => START, maxEntries: 0 })
  const r = record('m_off')
  cache.remember(r, cache.ticket())
  t.equal(cache.size(), 0)
  t.equal(cache.peek('m_off'), undefined)
  t.same(cache.tokenOf(r), { merchantId: 'm_off', accessToken: 'at-m_off-1', tokenType: 'Bearer', scope: 'payments', expiresAt: START + 900_000 })
})

t.test('an entry holds the access token and what invalidates it: no refresh token, no record', async t => {
  const cache = createTokenCache({ now: () => START, maxEntries: 10 })
  const r = record('m_slim', { clientStatus: 'client-status-marker' })
  cache.remember(r, cache.ticket())
  const entry = cache.entry('m_slim')
  t.same(Object.keys(entry ?? {}).sort(), ['connectedUntil', 'epoch', 'freshUntil', 'grant', 'token', 'version'])
  t.same(Object.keys(entry?.token ?? {}).sort(), ['accessToken', 'expiresAt', 'merchantId', 'scope', 'tokenType'])
  const strings: string[] = []
  const walk = (v: unknown): void => {
    if (typeof v === 'string') strings.push(v)
    else if (typeof v === 'object' && v !== null) for (const x of Object.values(v)) walk(x)
  }
  walk(entry)
  t.notOk(strings.some(s => s.includes(r.refreshToken)), 'the refresh token is not kept')
  t.notOk(strings.includes('client-status-marker'), 'nor the rest of the record')
  t.ok(Object.isFrozen(entry?.token), 'the token handed out is frozen')
  t.equal(cache.tokenOf(r), entry?.token, 'the cached record\'s token object is the cached one')
  t.not(cache.tokenOf({ ...r, version: 2, accessToken: 'at-other' }), entry?.token, 'another version gets its own')
})

t.test('a token cut from a larger decrypted string does not keep the rest of it (the refresh token) alive', async t => {
  setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as () => void
  const cache = createTokenCache({ now: () => START, maxEntries: 10 })
  const secret = randomBytes(24)
  const access = randomBytes(24)
  // As the store decrypts both tokens: one plaintext, each token a slice of it; built in a scope
  // of its own so that nothing but the cache can keep it.
  ;(() => {
    const at = `at-${access.toString('hex')}`
    const plain = `${at.length}:${at}rt-${secret.toString('hex')}`
    const colon = plain.indexOf(':')
    cache.remember(record('m_cut', { accessToken: plain.slice(colon + 1, colon + 1 + at.length), refreshToken: plain.slice(colon + 1 + at.length) }), cache.ticket())
  })()
  gc()
  const chunks: string[] = []
  for await (const chunk of getHeapSnapshot()) chunks.push(String(chunk))
  const heap = chunks.join('')
  t.ok(heap.includes(`at-${access.toString('hex')}`), 'the snapshot holds the cached access token (the search works)')
  t.notOk(heap.includes(secret.toString('hex')), 'but not the refresh token')
  t.equal(cache.peek('m_cut')?.accessToken, `at-${access.toString('hex')}`)
})

t.test('remember: the same record keeps its token object, an older version does not replace a newer, other statuses are forgotten', async t => {
  let now = START
  const cache = createTokenCache({ now: () => now, maxEntries: 10 })
  cache.remember(record('m', { version: 2 }), cache.ticket())
  const token = cache.peek('m')
  cache.remember(record('m', { version: 2 }), cache.ticket())
  t.equal(cache.peek('m'), token, 'read again: the same object (the routes key their body cache on it)')
  cache.remember(record('m', { version: 1 }), cache.ticket())
  t.equal(cache.peek('m')?.accessToken, 'at-m-2', 'a read that crossed a newer write does not win')
  cache.remember(record('m', { version: 1, grant: 'g2', accessToken: 'at-new-grant' }), cache.ticket())
  t.equal(cache.peek('m')?.accessToken, 'at-new-grant', 'another grant (a new onboarding) replaces it')
  cache.remember(record('m', { version: 2, grant: 'g2', status: 'reauthorization_required' }), cache.ticket())
  t.equal(cache.entry('m'), undefined, 'a merchant that must connect again is not cached')
  cache.remember(record('m', { refreshTokenExpiresAt: START - 1 }), cache.ticket())
  t.equal(cache.entry('m'), undefined, 'nor one whose refresh token expired')

  cache.remember(record('due'), cache.ticket())
  t.ok(cache.peek('due') !== undefined)
  now = START + 870_000
  t.equal(cache.peek('due'), undefined, 'past its refresh point it is no longer peeked')
  t.ok(cache.entry('due') !== undefined, 'but still there for the refresh decision')
})

interface Harness {
  server: TestRedis
  redis: Redis
  subscriber: Redis
  cache: TokenCache
  /** Calls of readVersions, with the number of merchants each asked for. */
  reads: number[]
  /** Writes a record's metadata as the store does (version and grant in keys.merchant). */
  store: (merchantId: string, version: number, grant?: string) => Promise<void>
}

async function harness (t: Test, opts: { wrap?: (read: ReadVersions) => ReadVersions, redisArgs?: string[] } = {}): Promise<Harness> {
  const server = await startRedis(t, opts.redisArgs)
  const redis = new Redis(server.url, { maxRetriesPerRequest: 1 })
  redis.on('error', () => {})
  const subscriber = createSubscriber(redis) as Redis
  subscriber.on('error', () => {})
  t.teardown(() => { redis.disconnect(); subscriber.disconnect() })
  const cache = createTokenCache({ now: () => START, maxEntries: 10_000 })
  t.teardown(cache.stop)
  const reads: number[] = []
  const direct = createVersionReads(redis, keys)
  const counted: ReadVersions = async (ids) => { reads.push(ids.length); return await direct(ids) }
  await cache.listen(subscriber, keys.events, () => {}, opts.wrap?.(counted) ?? counted)
  return {
    server,
    redis,
    subscriber,
    cache,
    reads,
    store: async (merchantId, version, grant = 'g1') => { await redis.hset(keys.merchant(merchantId), 'version', version, 'grant', grant) }
  }
}

t.test('change messages: a newer version, another grant or a delete drops the entry; an old message does not', async t => {
  const h = await harness(t)
  for (const m of ['m_new', 'm_grant', 'm_del', 'm_old']) h.cache.remember(record(m, { version: 3 }), h.cache.ticket())
  await h.redis.publish(keys.events, 'm_new:4:g1')
  await h.redis.publish(keys.events, 'm_grant:1:g2')
  await h.redis.publish(keys.events, 'm_del')
  await h.redis.publish(keys.events, 'm_old:3:g1')
  t.ok(await until(() => h.cache.entry('m_del') === undefined, 5000), 'the messages arrived')
  t.equal(h.cache.entry('m_new'), undefined)
  t.equal(h.cache.entry('m_grant'), undefined)
  t.ok(h.cache.peek('m_old') !== undefined, 'a message about the version cached keeps it')
})

t.test('a read that began before a change and answers after its message is not cached; its own write is', async t => {
  const h = await harness(t)
  const before = h.cache.ticket() // a read of m_del and m_v1 starts
  await h.redis.publish(keys.events, 'm_del') // another replica deletes m_del
  await h.redis.publish(keys.events, 'm_v1:2:g1') // and writes version 2 of m_v1
  await h.redis.publish(keys.events, 'm_own:2:g1') // our own write of m_own, version 2
  t.ok(await until(() => h.cache.ticket().heard >= before.heard + 3, 5000), 'the messages arrived')
  h.cache.remember(record('m_del'), before)
  h.cache.remember(record('m_v1'), before)
  h.cache.remember(record('m_own', { version: 2 }), before)
  t.equal(h.cache.entry('m_del'), undefined, 'the deleted merchant\'s record, read before the delete, is not cached')
  t.equal(h.cache.entry('m_v1'), undefined, 'nor an older version')
  t.ok(h.cache.peek('m_own') !== undefined, 'the record a message announces is cached')
  h.cache.remember(record('m_del'), h.cache.ticket())
  t.ok(h.cache.peek('m_del') !== undefined, 'a read that began after the message is cached')
})

t.test('subscriber reconnect: entries are revalidated, not dropped', async t => {
  let release = (): void => {}
  const gate = new Promise<void>(resolve => { release = resolve })
  let started = 0
  const h = await harness(t, { wrap: read => async ids => { started++; await gate; return await read(ids) } })
  const { cache } = h
  const mids = Array.from({ length: 2500 }, (_, i) => `m_${i}`)
  for (const m of mids) await h.store(m, 1)
  for (const m of mids) cache.remember(record(m), cache.ticket())
  t.same(h.reads, [], 'records read while subscribed are trusted: nothing to check')
  const kept = cache.peek('m_0')
  // A read that begins before the loss and lands after the reconnect.
  const early = cache.ticket()

  h.subscriber.disconnect()
  t.ok(await until(() => h.subscriber.status === 'end', 5000), 'the subscriber is away')
  // Changes while nobody listens: their messages are lost.
  await h.store('m_1', 2)
  await h.redis.publish(keys.events, 'm_1:2:g1')
  await h.redis.del(keys.merchant('m_2'))
  await h.store('m_3', 1, 'g2')
  // Read while away, changed afterwards, still while away.
  await h.store('m_window', 1)
  cache.remember(record('m_window'), cache.ticket())
  await h.store('m_window', 2)
  t.equal(cache.peek('m_1')?.accessToken, 'at-m_1-1', 'entries are still served while the subscriber is away')

  await h.subscriber.connect()
  t.ok(await until(() => started > 0, 5000), 'revalidation started once subscribed again')
  t.equal(cache.peek('m_1')?.accessToken, 'at-m_1-1', 'entries are served while it runs')
  // Lands now, with a ticket from before the loss: checked although the pass had already listed its entries.
  await h.store('m_early', 2)
  cache.remember(record('m_early'), early)
  await h.store('m_early_same', 1)
  cache.remember(record('m_early_same'), early)
  release()

  t.ok(await until(() => cache.entry('m_early') === undefined && cache.entry('m_window') === undefined && cache.entry('m_1') === undefined, 5000), 'the changed entries are dropped')
  t.equal(cache.entry('m_2'), undefined, 'a record that is gone is dropped')
  t.equal(cache.entry('m_3'), undefined, 'another grant is dropped')
  t.equal(cache.peek('m_0'), kept, 'an unchanged entry is kept, with its token object')
  t.ok(cache.peek('m_early_same') !== undefined, 'a late unchanged one too')
  t.equal(cache.size(), mids.length - 3 + 1)
  t.ok(h.reads.every(n => n <= REVALIDATION_CHUNK), `in chunks of at most ${REVALIDATION_CHUNK} (${h.reads.join(', ')})`)
  t.equal(h.reads.reduce((a, b) => a + b, 0), mids.length + 3, 'each entry checked once')

  // Checked entries are trusted again: a second look finds nothing to do.
  const before = h.reads.length
  cache.remember(record('m_after'), cache.ticket())
  await sleep(100)
  t.equal(h.reads.length, before, 'a record read once subscribed needs no check')
})

t.test('revalidation that cannot reach Redis keeps the entries and tries again', async t => {
  let attempts = 0
  const h = await harness(t, {
    wrap: read => async ids => {
      if (++attempts === 1) throw new Error('Redis away')
      return await read(ids)
    }
  })
  for (const m of ['m_a', 'm_b']) {
    await h.store(m, 1)
    h.cache.remember(record(m), h.cache.ticket())
  }
  h.subscriber.disconnect()
  t.ok(await until(() => h.subscriber.status === 'end', 5000), 'the subscriber is away')
  await h.store('m_b', 2)
  await h.subscriber.connect()
  t.ok(await until(() => attempts === 1, 5000), 'the first check failed')
  t.ok(h.cache.peek('m_b') !== undefined, 'entries kept meanwhile')
  t.ok(await until(() => h.cache.entry('m_b') === undefined, 5000), 'the next attempt dropped the changed one')
  t.ok(h.cache.peek('m_a') !== undefined, 'and kept the other')
})

t.test('Redis restarted (append-only file): unchanged entries survive, changed ones do not', async t => {
  const h = await harness(t, { redisArgs: ['--appendonly', 'yes', '--appendfsync', 'always'] })
  for (const m of ['m_same', 'm_changed', 'm_gone']) {
    await h.store(m, 1)
    h.cache.remember(record(m), h.cache.ticket())
  }
  await h.server.stop()
  t.ok(h.cache.peek('m_same') !== undefined, 'served while Redis is down')
  await h.server.start()
  // A connection of its own: the test's writes need not wait for the client's backoff.
  const writer = new Redis(h.server.url)
  t.teardown(() => writer.disconnect())
  // As the store does, with its messages, which the subscriber may or may not be back to hear.
  await writer.hset(keys.merchant('m_changed'), 'version', 2)
  await writer.publish(keys.events, 'm_changed:2:g1')
  await writer.del(keys.merchant('m_gone'))
  await writer.publish(keys.events, 'm_gone')
  t.ok(await until(() => h.cache.entry('m_changed') === undefined && h.cache.entry('m_gone') === undefined, 10_000), 'changed and deleted entries dropped')
  t.ok(h.cache.peek('m_same') !== undefined, 'the unchanged one kept')
})
