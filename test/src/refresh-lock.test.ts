// The refresh lock on a real Redis, without an app: exclusive, owner-checked renew and release,
// expiry, and the waits of the replicas that did not get it.
import t from 'tap'
import { Redis } from 'ioredis'
import { startRedis } from '../helpers/redis.js'
import { createRedisKeys } from '../../src/redis-keys.js'
import { createRefreshLock } from '../../src/refresh-lock.js'

const server = await startRedis(t)
const keys = createRedisKeys('lock-test:')
const clients: Redis[] = []
const client = (): Redis => {
  const c = new Redis(server.url, { maxRetriesPerRequest: 1 })
  clients.push(c)
  return c
}
t.teardown(() => { for (const c of clients) c.disconnect() })
const admin = client()

t.test('one owner at a time; renew and release only by the owner', async t => {
  const a = createRefreshLock({ redis: client(), keys, ttlMs: 5000 })
  const b = createRefreshLock({ redis: client(), keys, ttlMs: 5000 })
  const held = await a.acquire('m_1')
  t.ok(held, 'a gets the lock')
  t.equal(await b.acquire('m_1'), undefined, 'b does not while a holds it')
  t.ok(await a.acquire('m_2'), 'locks are per merchant')

  // A stranger with the key but not the owner value can neither extend nor release it.
  const forged = { key: held!.key, owner: 'not-the-owner' }
  t.equal(await b.renew(forged), false, 'renew by another owner is refused')
  await b.release(forged)
  t.equal(await admin.get(held!.key), held!.owner, 'release by another owner leaves the lock')

  await admin.pexpire(held!.key, 1000)
  t.equal(await a.renew(held!), true, 'the owner renews')
  t.ok(await admin.pttl(held!.key) > 4000, 'back to a full TTL')

  await a.release(held!)
  t.equal(await admin.exists(held!.key), 0, 'the owner releases')
  t.ok(await b.acquire('m_1'), 'then b gets it')
})

t.test('a lock whose holder died expires by itself', async t => {
  const a = createRefreshLock({ redis: client(), keys, ttlMs: 300 })
  const b = createRefreshLock({ redis: client(), keys, ttlMs: 300 })
  t.ok(await a.acquire('m_dead'))
  t.equal(await b.acquire('m_dead'), undefined)
  await new Promise(resolve => setTimeout(resolve, 400))
  t.ok(await b.acquire('m_dead'), 'free after the TTL')
  const stale = { key: keys.lock('m_dead'), owner: 'the-dead-holder' }
  t.equal(await a.renew(stale), false, 'the dead holder cannot take it back')
})

t.test('waitForHolder: updated, free or timeout', async t => {
  const waiterLock = createRefreshLock({ redis: client(), keys, ttlMs: 5000, pollMs: 50 })
  const holderLock = createRefreshLock({ redis: client(), keys, ttlMs: 5000 })
  let version = 1
  const readVersion = async (): Promise<number | undefined> => version

  await t.test('the version moves: updated', async t => {
    const held = await holderLock.acquire('m_w1')
    t.ok(held)
    setTimeout(() => { version = 2 }, 120)
    t.equal(await waiterLock.waitForHolder('m_w1', 1, Date.now() + 5000, readVersion), 'updated')
  })

  await t.test('the holder lets go without a new version: free', async t => {
    version = 1
    const held = await holderLock.acquire('m_w2')
    setTimeout(() => { holderLock.release(held!).catch(() => {}) }, 120)
    t.equal(await waiterLock.waitForHolder('m_w2', 1, Date.now() + 5000, readVersion), 'free')
  })

  await t.test('nothing happens: timeout at the deadline', async t => {
    t.ok(await holderLock.acquire('m_w3'))
    const started = Date.now()
    t.equal(await waiterLock.waitForHolder('m_w3', 1, started + 300, readVersion), 'timeout')
    t.ok(Date.now() - started >= 300, 'not before the deadline')
  })

  await t.test('a change notice wakes the waiter before the poll interval', async t => {
    const slow = createRefreshLock({ redis: client(), keys, ttlMs: 5000, pollMs: 60_000 })
    t.ok(await holderLock.acquire('m_w4'))
    version = 1
    const started = Date.now()
    const waiting = slow.waitForHolder('m_w4', 1, started + 120_000, readVersion)
    setTimeout(() => { version = 2; slow.notify('m_w4') }, 100)
    t.equal(await waiting, 'updated')
    t.ok(Date.now() - started < 10_000, 'woken by the notice, not by polling')
  })

  await t.test('the record was deleted: updated', async t => {
    t.ok(await holderLock.acquire('m_w5'))
    t.equal(await waiterLock.waitForHolder('m_w5', 1, Date.now() + 5000, async () => undefined), 'updated')
  })
})
