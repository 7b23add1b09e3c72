// The onboarding state store against a private Redis: single use, atomic consume, TTL, and no Redis
// round trip for values that cannot be a state.
import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Redis } from 'ioredis'
import { serviceClient, startRedis, type TestRedis, withRedisStopped, scanKeys } from '../helpers/redis.js'
import { createRedisKeys } from '../../src/redis-keys.js'
import { createStateStore, hashBinding, type StateRecord, type StateStore } from '../../src/state-store.js'
import { StorageUnavailableError } from '../../src/errors.js'

type Tap = Parameters<Parameters<typeof t.test>[0]>[0]

const PREFIX = 'test:'
const keys = createRedisKeys(PREFIX)

/** A client with the service's own request-path settings. */
const client = serviceClient

/** consume() from the browser that started the state: the record, or undefined. */
async function take (store: StateStore, state: string, binding?: string): Promise<StateRecord | undefined> {
  const r = await store.consume(state, binding, true)
  return r.kind === 'consumed' ? r.record : undefined
}

async function setup (t: Tap, ttlSeconds = 600, now?: () => number): Promise<{ server: TestRedis, redis: Redis, store: StateStore }> {
  const server = await startRedis(t)
  const redis = await client(t, server)
  return { server, redis, store: createStateStore(redis, keys, { ttlSeconds, now }) }
}

/**
 * Runs fn while the server is stopped and starts it again whatever happens: the redis helper's
 * teardown cannot stop a server that was already killed (it waits for an exit that never comes).
 */

t.test('create stores a fresh 256-bit state under the prefix with the TTL', async t => {
  const { redis, store } = await setup(t, 600)
  const before = Date.now()
  const { state, expiresAt } = await store.create({ merchantId: 'm_1' })
  t.match(state, /^[A-Za-z0-9_-]{43}$/, '43 base64url characters')
  t.ok(expiresAt.getTime() >= before + 600_000 && expiresAt.getTime() <= Date.now() + 600_000, 'expiresAt = now + TTL')
  const stored = await scanKeys(redis)
  t.same(stored, [keys.state(state)], 'one key, the state key')
  t.ok(stored[0].startsWith(PREFIX), 'under the prefix')
  t.notOk(stored[0].includes(state), 'the key does not contain the state value')
  t.notMatch(String(await redis.get(stored[0])), state, 'nor does the value')
  const ttl = await redis.ttl(stored[0])
  t.ok(ttl > 595 && ttl <= 600, `TTL ≈ 600 s, got ${ttl}`)

  const many = new Set<string>()
  for (let i = 0; i < 100; i++) many.add((await store.create({})).state)
  t.equal(many.size, 100, 'states do not repeat')
})

t.test('consume returns the record once', async t => {
  const { redis, store } = await setup(t)
  const bound = await store.create({ merchantId: 'm_bound' })
  const unbound = await store.create({})
  const first = await take(store, bound.state)
  t.equal(first?.merchantId, 'm_bound', 'the bound merchant comes back')
  t.type(first?.createdAt, 'number')
  t.equal(await take(store, bound.state), undefined, 'a second consume finds nothing')
  t.equal(await redis.exists(keys.state(bound.state)), 0, 'the key is gone')

  const u = await take(store, unbound.state)
  t.ok(u !== undefined, 'an unbound state is consumed')
  t.equal(u?.merchantId, undefined, 'without a merchant')
  t.equal(await take(store, unbound.state), undefined)
  t.same(await scanKeys(redis, `${PREFIX}state:*`), [], 'no state left')
})

t.test('consume of a value that cannot be a state does not touch Redis', async t => {
  const { redis, store } = await setup(t)
  const { state } = await store.create({ merchantId: 'm_1' })
  const garbage = ['', 'abc', `${state}x`, state.slice(1), `${state.slice(0, 42)}.`, `${state.slice(0, 42)}=`, '*', 'state:*', '../x', ' '.repeat(43), 'a'.repeat(2049), `${state}\n`]
  await redis.config('RESETSTAT')
  for (const g of garbage) t.equal(await take(store, g), undefined, `garbage ${JSON.stringify(g.slice(0, 20))}`)
  const stats = String(await redis.info('commandstats'))
  t.notMatch(stats, /cmdstat_(getdel|get|del|eval|evalsha|fcall)[:,]/, 'no read or delete reached Redis')
  t.equal(await redis.exists(keys.state(state)), 1, 'the real state is untouched')

  // And with Redis gone, garbage still answers (no command was attempted).
  const { server: down, store: offline } = await setup(t)
  await withRedisStopped(down, async () => {
    t.equal(await take(offline, 'abc'), undefined, 'garbage with Redis down: undefined, no storage error')
    await t.rejects(offline.consume(state, undefined, true), StorageUnavailableError, 'a well-formed state with Redis down: storage error')
  })
})

t.test('50 concurrent consumes of one state: exactly one record', async t => {
  const { server, redis, store } = await setup(t)
  // Several connections, so the consumes really interleave at the server.
  const stores = [store]
  for (let i = 0; i < 9; i++) stores.push(createStateStore(await client(t, server), keys, { ttlSeconds: 600 }))
  for (let round = 0; round < 5; round++) {
    const { state } = await store.create({ merchantId: `m_${round}` })
    const results = await Promise.all(Array.from({ length: 50 }, async (_, i) => await take(stores[i % stores.length], state)))
    const got = results.filter(r => r !== undefined)
    t.equal(got.length, 1, `round ${round}: exactly one consumer got the record`)
    t.equal(got[0]?.merchantId, `m_${round}`)
  }
  t.same(await scanKeys(redis, `${PREFIX}state:*`), [], 'no state left')
})

t.test('a state expires: Redis TTL, and the clock guard', async t => {
  const { redis, store } = await setup(t, 1)
  const { state } = await store.create({ merchantId: 'm_1' })
  const pttl = await redis.pttl(keys.state(state))
  t.ok(pttl > 0 && pttl <= 1000, `PTTL ≤ 1 s, got ${pttl}`)
  await sleep(1500)
  t.equal(await redis.exists(keys.state(state)), 0, 'Redis expired it')
  t.equal(await take(store, state), undefined, 'an expired state is not returned')

  const clock = { ms: Date.now() }
  const { redis: r2, store: guarded } = await setup(t, 60, () => clock.ms)
  const late = await guarded.create({ merchantId: 'm_2' })
  const onTime = await guarded.create({ merchantId: 'm_3' })
  clock.ms += 60_001
  t.equal(await r2.exists(keys.state(late.state)), 1, 'still in Redis')
  t.equal(await take(guarded, late.state), undefined, 'older than the TTL by the clock: not returned')
  t.equal(await r2.exists(keys.state(late.state)), 0, 'and consumed all the same')
  clock.ms -= 1001
  t.equal((await take(guarded, onTime.state))?.merchantId, 'm_3', 'within the TTL by the clock: returned')
})

t.test('Redis down: create fails with StorageUnavailableError', async t => {
  const { server, store } = await setup(t)
  await withRedisStopped(server, async () => {
    await t.rejects(store.create({ merchantId: 'm_1' }), StorageUnavailableError)
  })
})

t.test('binding: another browser gets browser_mismatch and the state stays; the right one consumes it', async t => {
  const { redis, store } = await setup(t)
  const mine = hashBinding('browser-a')
  const { state } = await store.create({ binding: mine })
  t.notMatch(String(await redis.get(keys.state(state))), 'browser-a', 'only the hash of the browser\'s value is stored')
  t.same(await store.consume(state, hashBinding('browser-b'), true), { kind: 'browser_mismatch' }, 'another browser')
  t.same(await store.consume(state, undefined, true), { kind: 'browser_mismatch' }, 'no cookie at all')
  t.equal(await redis.exists(keys.state(state)), 1, 'the state is still there')
  const ok = await store.consume(state, mine, true)
  t.equal(ok.kind, 'consumed')
  t.equal(ok.kind === 'consumed' && ok.bindingMatched, true)

  const relayed = await store.create({ binding: mine })
  const loose = await store.consume(relayed.state, hashBinding('browser-b'), false)
  t.equal(loose.kind, 'consumed', 'not enforced: consumed all the same')
  t.equal(loose.kind === 'consumed' && loose.bindingMatched, false, 'and the mismatch is reported')
})

t.test('outcome: pending once consumed, settled for a reload, gone with the state\'s time', async t => {
  const { redis, store } = await setup(t, 2)
  const binding = hashBinding('browser-a')
  const { state } = await store.create({ binding })
  t.equal(await store.outcome(state), undefined, 'nothing before use')
  await store.consume(state, binding, true)
  t.same(await store.outcome(state), { binding, outcome: undefined }, 'pending while the code is exchanged')
  await store.settle(state, { outcome: { ok: true, merchantId: 'm_1' }, reference: 'ABCD-EFGH' })
  t.same(await store.outcome(state), { binding, outcome: { outcome: { ok: true, merchantId: 'm_1' }, reference: 'ABCD-EFGH' } })
  const pttl = await redis.pttl(keys.stateOutcome(state))
  t.ok(pttl > 0 && pttl <= 2000, 'it lives as long as the state had left')
  await sleep(2100)
  t.equal(await store.outcome(state), undefined, 'gone')
  await store.settle(state, { late: true })
  t.equal(await redis.exists(keys.stateOutcome(state)), 0, 'a late settle does not bring it back')
})
