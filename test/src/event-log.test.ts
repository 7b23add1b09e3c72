// The lifecycle event log and the outbox in front of it, against a private Redis: order, paging
// with `after`, ids the service did not issue, ids that survive a key rotation, trimming, the
// delivery queued in the same step, and events held in memory while Redis is away.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { serviceClient, startRedis } from '../helpers/redis.js'
import { until } from '../helper.js'
import { createRedisKeys } from '../../src/redis-keys.js'
import { createEventIds } from '../../src/event-id.js'
import { createEventLog, type EventLog, type PendingEvent } from '../../src/event-log.js'
import { createEventOutbox } from '../../src/event-outbox.js'
import { InvalidRequestError } from '../../src/errors.js'

const keys = createRedisKeys('test:')
const k1 = { kid: 'k1', key: randomBytes(32) }
const k2 = { kid: 'k2', key: randomBytes(32) }
const quiet = { warn: () => {}, info: () => {}, error: () => {} }

/** A client with the service's own request-path settings. */
const client = serviceClient

const pending = (i: number, merchantId: string | null = `m_${i}`): PendingEvent =>
  ({ type: 'merchant.connected', merchantId, occurredAt: Date.UTC(2030, 0, 1, 0, 0, i), data: { n: i, reference: `ref-${i}` } })

async function appendAll (log: EventLog, events: PendingEvent[]): Promise<string[]> {
  const results = await log.append(events)
  return results.map(r => { if (r instanceof Error) throw r; return r })
}

t.test('appends in order and pages with after; next_after keeps the poller in place', async t => {
  const redis = await client(t, await startRedis(t))
  const log = createEventLog(redis, keys, createEventIds([k1]), { webhooks: false })

  t.same(await log.list(undefined, 100), { items: [], nextAfter: null }, 'empty log: no items, null cursor')

  await appendAll(log, Array.from({ length: 5 }, (_, i) => pending(i)))
  const first = await log.list(undefined, 2)
  t.same(first.items.map(e => e.data.n), [0, 1], 'oldest first, limit respected')
  t.match(first.items[0], { type: 'merchant.connected', merchant_id: 'm_0', occurred_at: '2030-01-01T00:00:00.000Z', data: { n: 0, reference: 'ref-0' } })
  t.match(first.items[0].id, /^evt_\d+-\d+_[A-Za-z0-9_-]{22}$/)
  t.equal(first.nextAfter, first.items[1].id, 'next_after is the last item\'s id')

  const second = await log.list(first.nextAfter ?? undefined, 2)
  t.same(second.items.map(e => e.data.n), [2, 3], 'continues after the cursor')
  const third = await log.list(second.nextAfter ?? undefined, 100)
  t.same(third.items.map(e => e.data.n), [4])
  const fourth = await log.list(third.nextAfter ?? undefined, 100)
  t.same(fourth, { items: [], nextAfter: third.nextAfter }, 'nothing new: the given cursor comes back')

  const again = await log.list(undefined, 100)
  t.same(again.items.map(e => e.id), [...first.items, ...second.items, ...third.items].map(e => e.id), 'ids are stable between reads')
  t.equal(new Set(again.items.map(e => e.id)).size, 5, 'and unique')

  const nullMerchant = await appendAll(log, [pending(9, null)])
  t.equal(nullMerchant.length, 1)
  t.equal((await log.list(third.nextAfter ?? undefined, 10)).items[0].merchant_id, null, 'merchant_id may be null')
})

t.test('an after the service did not issue is refused before Redis is asked', async t => {
  const redis = await client(t, await startRedis(t))
  const log = createEventLog(redis, keys, createEventIds([k1]), { webhooks: false })
  await appendAll(log, [pending(0), pending(1)])
  const [issued] = (await log.list(undefined, 1)).items
  const [, streamId, mac] = /^evt_(\d+-\d+)_(.+)$/.exec(issued.id) ?? []
  const other = createEventIds([{ kid: 'k1', key: randomBytes(32) }]).issue(streamId, 'k1')
  const flipped = `${mac.slice(0, -1)}${mac.endsWith('A') ? 'B' : 'A'}`
  const forged = [
    'garbage', '', `evt_${streamId}_${flipped}`, other, `evt_0-0_${mac}`, `${issued.id}=`, ` ${issued.id}`,
    issued.id.replace(streamId, streamId.replace(/-(\d+)$/, (_, s: string) => `-${Number(s) + 1}`))
  ]
  for (const after of forged) {
    await t.rejects(log.list(after, 10), InvalidRequestError, `refused: ${JSON.stringify(after)}`)
  }
  t.equal((await log.list(issued.id, 10)).items.length, 1, 'the issued id is accepted')
})

t.test('ids stay the same after a key rotation, and stay valid while the old key is kept', async t => {
  const redis = await client(t, await startRedis(t))
  const before = createEventLog(redis, keys, createEventIds([k1]), { webhooks: false })
  await appendAll(before, [pending(0), pending(1)])
  const old = (await before.list(undefined, 10)).items

  const rotated = createEventLog(redis, keys, createEventIds([k2, k1]), { webhooks: false })
  await appendAll(rotated, [pending(2)])
  const now = (await rotated.list(undefined, 10)).items
  t.same(now.slice(0, 2).map(e => e.id), old.map(e => e.id), 'events named before the rotation keep their ids')
  t.same((await rotated.list(old[0].id, 10)).items.map(e => e.data.n), [1, 2], 'an old cursor still pages')
  const fresh = now[2].id

  const retired = createEventLog(redis, keys, createEventIds([k2]), { webhooks: false })
  await t.rejects(retired.list(old[0].id, 10), InvalidRequestError, 'a cursor under a removed key is no longer accepted')
  t.same((await retired.list(fresh, 10)).items, [], 'one made under the current key is')
})

t.test('the stream is capped but keeps at least minKept; a cursor into the trimmed part still pages', async t => {
  const redis = await client(t, await startRedis(t))
  const log = createEventLog(redis, keys, createEventIds([k1]), { webhooks: false, minKept: 50 })
  await appendAll(log, [pending(0)])
  const [oldest] = (await log.list(undefined, 1)).items
  for (let b = 0; b < 10; b++) await appendAll(log, Array.from({ length: 100 }, (_, i) => pending(1 + b * 100 + i)))
  const kept = await redis.xlen(keys.eventStream)
  t.ok(kept >= 50 && kept < 1001, `trimmed to ${kept} entries, never below 50`)
  const page = await log.list(oldest.id, 500)
  t.equal(page.items[0].data.n, 1001 - kept, 'after a trimmed event: from the oldest kept')
  t.equal(page.items.at(-1)?.data.n, 1000, 'up to the newest')
})

t.test('with webhooks on, each append queues its delivery in the same step; the body outlives trimming', async t => {
  const redis = await client(t, await startRedis(t))
  const log = createEventLog(redis, keys, createEventIds([k1]), { webhooks: true, minKept: 10 })
  const ids = await appendAll(log, Array.from({ length: 300 }, (_, i) => pending(i)))
  t.equal(await redis.zcard(keys.eventKey('webhook-due')), 300, 'one due delivery per event')
  t.ok(await redis.xlen(keys.eventStream) < 300, 'the stream was trimmed')
  const body = await redis.hget(keys.eventKey('webhook-body'), ids[0])
  t.ok(body !== null, 'the first event\'s body is still queued')
  t.match(log.eventOf(ids[0], String(body)), { type: 'merchant.connected', merchant_id: 'm_0', data: { n: 0 } })

  const off = createEventLog(redis, createRedisKeys('off:'), createEventIds([k1]), { webhooks: false })
  await appendAll(off, [pending(0)])
  t.equal(await redis.exists('off:{events}:webhook-due', 'off:{events}:webhook-body'), 0, 'webhooks off: nothing queued')
})

t.test('outbox: appends in emit order, holds events while Redis is away, drops the oldest beyond its bound', async t => {
  const server = await startRedis(t)
  const redis = await client(t, server)
  const log = createEventLog(redis, keys, createEventIds([k1]), { webhooks: false })
  let dropped = 0
  const appended: number[] = []
  const outbox = createEventOutbox({
    append: log.append,
    log: quiet,
    maxHeld: 50,
    retryMs: 50,
    onDropped: (n) => { dropped += n },
    onAppended: (e) => { appended.push(Number(e.data.n)) }
  })
  t.teardown(async () => await outbox.close(100))

  for (let i = 0; i < 20; i++) outbox.emit('merchant.refreshed', 'm_1', { n: i })
  t.ok(await outbox.flush(5000), 'flushed')
  t.same((await log.list(undefined, 500)).items.map(e => e.data.n), Array.from({ length: 20 }, (_, i) => i), 'in emit order')

  await server.stop()
  t.doesNotThrow(() => { for (let i = 20; i < 100; i++) outbox.emit('merchant.refreshed', 'm_1', { n: i }) }, 'emit never throws while Redis is away')
  t.ok(await until(() => appended.length === 20 && outbox.held() === 50, 5000), `held up to the bound (held ${outbox.held()})`)
  t.equal(dropped, 30, 'the oldest beyond the bound were dropped and counted')
  await server.start()
  t.ok(await outbox.flush(10_000), 'held events reach the log once Redis is back')
  const all = (await log.list(undefined, 500)).items.map(e => e.data.n)
  // The restarted server kept no data: the log holds what was held.
  t.same(all, Array.from({ length: 50 }, (_, i) => 50 + i), 'the newest 50, still in order')
})

t.test('outbox: close flushes what it can, then counts the rest as dropped', async t => {
  const server = await startRedis(t)
  const redis = await client(t, server)
  const log = createEventLog(redis, keys, createEventIds([k1]), { webhooks: false })
  let dropped = 0
  const outbox = createEventOutbox({ append: log.append, log: quiet, retryMs: 20, onDropped: (n) => { dropped += n } })
  outbox.emit('merchant.disconnected', 'm_1', {})
  await outbox.flush(5000)
  await server.stop()
  outbox.emit('merchant.disconnected', 'm_2', {})
  outbox.emit('merchant.disconnected', 'm_3', {})
  await outbox.close(200)
  t.equal(dropped, 2, 'events still held at close are counted')
  outbox.emit('merchant.disconnected', 'm_4', {})
  t.equal(dropped, 3, 'and so is an event emitted after close')
  await server.start()
})
