// Webhook deliveries against a private Redis and a local receiver (node:http): signed with every
// secret, retried after failures, timeouts and a receiver that is down, delivered by another
// replica when one dies mid-delivery, never twice at once, and dead after the retry window.
// Delays are shortened through the worker's options.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import type { Redis } from 'ioredis'
import { serviceClient, startRedis, freePort } from '../helpers/redis.js'
import { startReceiver, verify, webhookSecret, type Receiver } from '../helpers/webhook-receiver.js'
import { until } from '../helper.js'
import { createRedisClient, waitReady } from '../../src/redis-client.js'
import { createRedisKeys } from '../../src/redis-keys.js'
import { createEventIds } from '../../src/event-id.js'
import { createEventLog, type EventLog, type LifecycleEvent } from '../../src/event-log.js'
import { createEventOutbox, type EventOutbox } from '../../src/event-outbox.js'
import { createWebhookQueue, type WebhookQueue } from '../../src/webhook-queue.js'
import { createWebhookSigner } from '../../src/webhook-signing.js'
import { createWebhookWorker, type AttemptOutcome, type WebhookWorker, type WebhookWorkerOptions } from '../../src/webhook-delivery.js'

type Tap = Parameters<Parameters<typeof t.test>[0]>[0]

const keys = createRedisKeys('test:')
const ids = createEventIds([{ kid: 'k1', key: randomBytes(32) }])
const quiet = { warn: () => {}, info: () => {}, error: () => {} }
const FAST = { pollMs: 20, timeoutMs: 300, leaseMs: 1000, retryDelaysMs: [50, 100, 200], jitter: 0 }

/** A client with the service's own request-path settings. */
const client = serviceClient

interface Tally { attempts: AttemptOutcome[], delivered: number, dead: number }

interface Setup {
  redisUrl: string
  redis: Redis
  log: EventLog
  outbox: EventOutbox
  queue: WebhookQueue
  secrets: Array<{ text: string, key: Buffer }>
  /** A worker (a replica) POSTing to url; stopped at teardown. */
  worker: (url: string, opts?: Partial<WebhookWorkerOptions> & { redis?: Redis }) => WebhookWorker & { tally: Tally }
}

async function setup (t: Tap): Promise<Setup> {
  const server = await startRedis(t)
  const redis = await client(t, server)
  const log = createEventLog(redis, keys, ids, { webhooks: true })
  const outbox = createEventOutbox({ append: log.append, log: quiet })
  t.teardown(async () => await outbox.close(1000))
  const secrets = [webhookSecret(), webhookSecret()]
  const signer = createWebhookSigner(secrets.map(s => s.key))
  return {
    redisUrl: server.url,
    redis,
    log,
    outbox,
    queue: createWebhookQueue(redis, keys),
    secrets,
    worker (url, opts = {}) {
      const tally: Tally = { attempts: [], delivered: 0, dead: 0 }
      const worker = createWebhookWorker({
        ...FAST,
        ...opts,
        queue: createWebhookQueue(opts.redis ?? redis, keys),
        signer,
        url,
        eventOf: log.eventOf,
        log: quiet,
        onAttempt: (o) => { tally.attempts.push(o) },
        onSettled: (o) => { tally[o]++ }
      })
      t.teardown(async () => await worker.stop())
      worker.start()
      return { ...worker, tally }
    }
  }
}

/** The events a receiver got and verified (each request checked under every secret), by id. */
function verifiedIds (t: Tap, s: Setup, receiver: Receiver): string[] {
  return receiver.received.map(r => {
    const payloads = s.secrets.map(secret => verify(secret.text, r) as LifecycleEvent)
    t.same(payloads[1], payloads[0])
    t.equal(r.headers['webhook-id'], payloads[0].id, 'webhook-id is the event id')
    return payloads[0].id
  })
}

const emitMany = (outbox: EventOutbox, n: number): void => {
  for (let i = 0; i < n; i++) outbox.emit('merchant.refreshed', `m_${i}`, { n: i })
}

t.test('every event arrives once, as JSON, signed with every configured secret', async t => {
  const s = await setup(t)
  const receiver = await startReceiver(t)
  const w = s.worker(receiver.url)
  s.outbox.emit('merchant.connected', 'm_1', { onboarding_id: 'ol_1', reference: 'acct-7' })
  s.outbox.emit('onboarding.failed', null, { reason: 'exchange_failed', onboarding_id: null, reference: null })
  emitMany(s.outbox, 10)
  t.ok(await until(() => receiver.received.length >= 12 && w.tally.delivered === 12, 10_000), 'all delivered')

  const logged = (await s.log.list(undefined, 100)).items
  const r0 = receiver.received.find(r => r.headers['webhook-id'] === logged[0].id)
  t.ok(r0 !== undefined, 'the first event was posted')
  if (r0 === undefined) return
  t.equal(r0.headers['content-type'], 'application/json')
  t.same(JSON.parse(r0.body), logged[0], 'the body is the event as the log lists it')
  t.match(r0.headers['webhook-signature'], /^v1,[A-Za-z0-9+/]{43}= v1,[A-Za-z0-9+/]{43}=$/, 'one v1 signature per secret')
  t.ok(Math.abs(Number(r0.headers['webhook-timestamp']) - Date.now() / 1000) < 60, 'timestamp in seconds, now')
  for (const secret of s.secrets) {
    t.throws(() => verify(secret.text, { ...r0, body: r0.body.replace('m_1', 'm_2') }), 'a changed body does not verify')
  }
  t.throws(() => verify(webhookSecret().text, r0), 'another secret does not verify')

  const got = verifiedIds(t, s, receiver)
  t.same([...got].sort(), logged.map(e => e.id).sort(), 'exactly the logged events, each once')
  t.same(w.tally.attempts.filter(a => a !== 'success'), [])
  t.same(await s.queue.backlog(), { pending: 0, dead: 0 }, 'nothing left to deliver')
  t.same(await s.redis.hlen(keys.eventKey('webhook-body')), 0, 'bodies are removed once delivered')
})

t.test('a receiver that fails, then recovers, gets the event later, freshly timestamped and signed', async t => {
  const s = await setup(t)
  const receiver = await startReceiver(t)
  let calls = 0
  receiver.answer(() => ++calls <= 2 ? 500 : 200)
  // The second retry comes a second later, so its timestamp differs.
  const w = s.worker(receiver.url, { retryDelaysMs: [50, 1100] })
  s.outbox.emit('merchant.reauthorization_required', 'm_1', { reason: 'refresh_token_rejected' })
  t.ok(await until(() => w.tally.delivered === 1, 10_000), 'delivered')
  t.same(w.tally.attempts, ['http_error', 'http_error', 'success'])
  t.equal(receiver.received.length, 3)
  const [first, , last] = receiver.received
  t.equal(first.headers['webhook-id'], last.headers['webhook-id'], 'the same webhook-id on every attempt')
  t.ok(Number(last.headers['webhook-timestamp']) > Number(first.headers['webhook-timestamp']), 'a fresh timestamp')
  t.not(last.headers['webhook-signature'], first.headers['webhook-signature'], 'and a fresh signature')
  for (const r of receiver.received) for (const secret of s.secrets) t.doesNotThrow(() => verify(secret.text, r), 'every attempt verifies')
  t.same(await s.queue.backlog(), { pending: 0, dead: 0 })
})

t.test('a receiver that is down, then slow, gets every event later', async t => {
  const s = await setup(t)
  const port = await freePort()
  const w = s.worker(`http://127.0.0.1:${port}/hooks`)
  emitMany(s.outbox, 20)
  t.ok(await until(() => w.tally.attempts.filter(a => a === 'network_error').length >= 40, 10_000), 'refused connections are retried')
  t.equal(w.tally.delivered, 0)

  const receiver = await startReceiver(t, port)
  let slow = 5
  receiver.answer(() => slow-- > 0 ? 'hang' : 204)
  t.ok(await until(() => w.tally.delivered === 20, 15_000), 'all delivered once the receiver is back')
  t.ok(w.tally.attempts.includes('timeout'), 'an answer later than the timeout counts as none')
  const logged = (await s.log.list(undefined, 100)).items.map(e => e.id)
  const got = new Set(receiver.received.filter(r => r.headers['webhook-id'] !== undefined).map(r => String(r.headers['webhook-id'])))
  t.same([...got].sort(), [...logged].sort(), 'every event arrived')
  t.equal(receiver.maxOpenPerId(), 1, 'never two requests for one event at once')
})

t.test('a replica dying mid-delivery leaves the event to another one after its lease; never two at once', async t => {
  const s = await setup(t)
  const receiver = await startReceiver(t)
  receiver.answer(() => 'hang')
  // Replica A has a connection of its own, which dies with it.
  const redisA = createRedisClient({ mode: 'standalone', url: s.redisUrl }) as Redis
  redisA.on('error', () => {})
  t.teardown(() => { redisA.disconnect() })
  await waitReady(redisA, 5000)
  const a = s.worker(receiver.url, { redis: redisA, timeoutMs: 1000, leaseMs: 1500 })
  s.outbox.emit('merchant.disconnected', 'm_1', {})
  t.ok(await until(() => receiver.received.length === 1, 5000), 'replica A is delivering')
  const [claimed] = await s.redis.zrange(keys.eventKey('webhook-due'), 0, -1, 'WITHSCORES')
  t.ok(claimed !== undefined, 'the delivery is leased')

  redisA.disconnect()
  await a.stop()
  receiver.answer(() => 204)
  const b = s.worker(receiver.url, { timeoutMs: 500, leaseMs: 1500 })
  t.ok(await until(() => b.tally.delivered === 1, 10_000), 'replica B delivered it')
  t.equal(receiver.received.length, 2, 'one attempt by each replica')
  t.equal(receiver.maxOpenPerId(), 1, 'B did not start while A\'s attempt was open')
  t.same(a.tally, { attempts: [], delivered: 0, dead: 0 }, 'A settled nothing')
  t.same(await s.queue.backlog(), { pending: 0, dead: 0 })
})

t.test('two live replicas share the work: each event delivered once, never two requests for one at once', async t => {
  const s = await setup(t)
  const receiver = await startReceiver(t)
  const a = s.worker(receiver.url, { concurrency: 3 })
  const b = s.worker(receiver.url, { concurrency: 3 })
  emitMany(s.outbox, 60)
  t.ok(await until(() => a.tally.delivered + b.tally.delivered === 60, 15_000), 'all delivered')
  const got = receiver.received.map(r => String(r.headers['webhook-id']))
  t.equal(new Set(got).size, 60)
  t.equal(got.length, 60, 'no event twice')
  t.equal(receiver.maxOpenPerId(), 1)
})

t.test('a replica that stops hands its deliveries back at once', async t => {
  const s = await setup(t)
  const receiver = await startReceiver(t)
  receiver.answer(() => 'hang')
  const a = s.worker(receiver.url, { timeoutMs: 5000, leaseMs: 60_000 })
  s.outbox.emit('merchant.refresh_token_expiring', 'm_1', { refresh_token_expires_at: '2031-01-01T00:00:00.000Z' })
  t.ok(await until(() => receiver.received.length === 1, 5000))
  await a.stop()
  const [, score] = await s.redis.zrange(keys.eventKey('webhook-due'), 0, -1, 'WITHSCORES')
  t.ok(Number(score) <= Date.now() + 1000, 'due again now, not after the lease')
  t.same(a.tally.attempts, [], 'not counted as an attempt')
  receiver.answer(() => 200)
  const b = s.worker(receiver.url)
  t.ok(await until(() => b.tally.delivered === 1, 5000), 'another replica delivers it')
})

t.test('retries exhausted: the event goes to the dead set and is counted', async t => {
  const s = await setup(t)
  const receiver = await startReceiver(t)
  receiver.answer(() => 503)
  const w = s.worker(receiver.url, { retryForMs: 400 })
  s.outbox.emit('merchant.refresh_failed', 'm_1', { reason: 'upstream_unavailable' })
  t.ok(await until(() => w.tally.dead === 1, 10_000), 'dead')
  t.ok(w.tally.attempts.length >= 2, `retried first (${w.tally.attempts.length} attempts)`)
  t.ok(w.tally.attempts.every(a => a === 'http_error'))
  t.same(await s.queue.backlog(), { pending: 0, dead: 1 })
  const [id] = await s.redis.zrange(keys.eventKey('webhook-dead'), 0, -1)
  t.ok(await s.redis.hget(keys.eventKey('webhook-body'), id) !== null, 'its body is kept')
  const n = receiver.received.length
  await new Promise(resolve => setTimeout(resolve, 300))
  t.equal(receiver.received.length, n, 'no attempt after it died')
})

t.test('the dead set is capped: the oldest go, with their bodies', async t => {
  const server = await startRedis(t)
  const redis = await client(t, server)
  const log = createEventLog(redis, keys, ids, { webhooks: true })
  const queue = createWebhookQueue(redis, keys, { deadCap: 2 })
  const appended = await log.append(Array.from({ length: 4 }, (_, i) => ({ type: 'merchant.refreshed' as const, merchantId: 'm_1', occurredAt: Date.now(), data: { n: i } })))
  for (const job of await queue.claim(10, 1000)) t.equal(await queue.settle(job, { outcome: 'retry', delayMs: 0, retryForMs: 0 }), 'dead')
  t.same(await queue.backlog(), { pending: 0, dead: 2 })
  t.same((await redis.hkeys(keys.eventKey('webhook-body'))).sort(), appended.slice(2).sort(), 'only the kept dead bodies remain')
})

t.test('a settlement after the lease was lost (another replica holds it) changes nothing', async t => {
  const server = await startRedis(t)
  const redis = await client(t, server)
  const log = createEventLog(redis, keys, ids, { webhooks: true })
  const queue = createWebhookQueue(redis, keys)
  await log.append([{ type: 'merchant.refreshed', merchantId: 'm_1', occurredAt: Date.now(), data: {} }])
  const [first] = await queue.claim(1, 1)
  t.ok(first !== undefined)
  await new Promise(resolve => setTimeout(resolve, 20))
  const [second] = await queue.claim(1, 60_000)
  t.equal(second?.streamId, first.streamId, 'reclaimed after the lease')
  t.equal(await queue.settle(first, { outcome: 'done' }), 'lost', 'the first holder cannot settle it')
  t.same(await queue.backlog(), { pending: 1, dead: 0 })
  t.same(await queue.claim(1, 1000), [], 'the second holder\'s lease stands')
  t.equal(await queue.settle(second, { outcome: 'done' }), 'settled')
  t.same(await queue.backlog(), { pending: 0, dead: 0 })
})

t.test('a delivery whose body is unreadable is dropped, not retried forever', async t => {
  const s = await setup(t)
  const receiver = await startReceiver(t)
  const [streamId] = await s.log.append([{ type: 'merchant.refreshed', merchantId: 'm_1', occurredAt: Date.now(), data: {} }])
  await s.redis.hset(keys.eventKey('webhook-body'), String(streamId), '{not json')
  const w = s.worker(receiver.url)
  t.ok(await until(async () => (await s.queue.backlog()).pending === 0, 5000), 'taken off the queue')
  t.equal(receiver.received.length, 0, 'nothing was sent')
  t.same(w.tally, { attempts: [], delivered: 0, dead: 0 })
})
