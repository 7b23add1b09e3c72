// GET /internal/v1/events and the events plugin in the app: paging with `after`, refused cursors
// and limits, Redis away, webhooks from the app signed with WEBHOOK_SECRET and counted in
// /metrics, and no secret in any stored event or webhook body. A private Redis and the simulator
// over real HTTP; a local receiver for webhooks.
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import type { AddressInfo } from 'node:net'
import { CLIENT_ID, build, onboard, recordIssuedTokens, secrets as makeSecrets, until, type Built, type BuildOptions } from '../helper.js'
import { buildSimulator } from '../../src/simulator/app.js'
import { scanKeys, startRedis, withRedisStopped } from '../helpers/redis.js'
import { startReceiver, verify, webhookSecret } from '../helpers/webhook-receiver.js'
import eventsPlugin, { type Events } from '../../plugins/events.js'
import eventRoutes from '../../routes/internal/v1/events.js'
import { addBearerGuard } from '../../routes/internal/guard.js'
import type { LifecycleEvent } from '../../src/event-log.js'
import { Redis } from 'ioredis'

const FAST = { pollMs: 20, timeoutMs: 1000, leaseMs: 3000, retryDelaysMs: [50], jitter: 0 }

type WithEvents = Built & { events: Events }

/** The app with the events plugin and route beside it, unless the app registers them itself. */
async function buildWithEvents (t: Parameters<typeof build>[0], opts: BuildOptions = {}): Promise<WithEvents> {
  let events: Events | undefined
  const b = await build(t, {
    ...opts,
    routes: async (app: FastifyInstance) => {
      if (!app.hasDecorator('events')) await app.register(eventsPlugin, { webhook: FAST })
      events = app.events
      if (!app.hasRoute({ method: 'GET', url: '/internal/v1/events' })) {
        await app.register(async (scope) => {
          addBearerGuard(scope)
          await scope.register(eventRoutes)
        }, { prefix: '/internal/v1/events' })
      }
    }
  })
  if (events === undefined) throw new Error('no events decorator')
  return { ...b, events }
}

async function list (b: WithEvents, query = ''): Promise<{ statusCode: number, body: { items: LifecycleEvent[], next_after: string | null } & { error?: { code: string } } }> {
  const res = await b.app.inject({ url: `/internal/v1/events${query}`, headers: b.auth })
  return { statusCode: res.statusCode, body: res.json() }
}

t.test('lists events oldest first, pages with after, keeps the cursor when nothing is new', async t => {
  const b = await buildWithEvents(t)
  t.same((await list(b)).body, { items: [], next_after: null }, 'nothing yet')

  b.events.emit('merchant.connected', 'm_1', { onboarding_id: 'onb_1', reference: 'acct-1' })
  b.events.emit('merchant.refreshed', 'm_1')
  b.events.emit('onboarding.failed', null, { reason: 'access_denied', onboarding_id: null, reference: null })
  t.ok(await b.events.flush(5000))

  const all = await list(b)
  t.equal(all.statusCode, 200)
  t.same(all.body.items.map(e => [e.type, e.merchant_id]), [['merchant.connected', 'm_1'], ['merchant.refreshed', 'm_1'], ['onboarding.failed', null]])
  t.same(all.body.items[0].data, { onboarding_id: 'onb_1', reference: 'acct-1' })
  t.same(all.body.items[1].data, {})
  t.match(all.body.items[0].occurred_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
  t.equal(all.body.next_after, all.body.items[2].id)

  const first = await list(b, '?limit=1')
  t.same(first.body.items.map(e => e.id), [all.body.items[0].id])
  const rest = await list(b, `?after=${encodeURIComponent(String(first.body.next_after))}&limit=500`)
  t.same(rest.body.items.map(e => e.id), all.body.items.slice(1).map(e => e.id), 'from the event after the cursor')
  const none = await list(b, `?after=${encodeURIComponent(String(rest.body.next_after))}`)
  t.same(none.body, { items: [], next_after: rest.body.next_after }, 'the cursor given comes back')

  b.events.emit('merchant.disconnected', 'm_1')
  await b.events.flush(5000)
  const later = await list(b, `?after=${encodeURIComponent(String(none.body.next_after))}`)
  t.same(later.body.items.map(e => e.type), ['merchant.disconnected'], 'a poller picks up where it was')
})

t.test('a cursor the service did not issue, or a bad limit → 400 invalid_request; no credential → 401', async t => {
  const b = await buildWithEvents(t)
  b.events.emit('merchant.connected', 'm_1')
  await b.events.flush(5000)
  const [issued] = (await list(b)).body.items
  const forged = [
    'x', issued.id.slice(0, -1), issued.id.replace(/_[^_]+$/, '_AAAAAAAAAAAAAAAAAAAAAA'),
    issued.id.replace(/^evt_\d+/, 'evt_1'), `${issued.id}%0A`, 'a'.repeat(129)
  ]
  for (const after of forged) {
    const res = await list(b, `?after=${after}`)
    t.equal(res.statusCode, 400, `after=${after.slice(0, 40)}`)
    t.equal(res.body.error?.code, 'invalid_request')
  }
  for (const limit of ['0', '501', 'abc', '1e2', '-1', '']) {
    t.equal((await list(b, `?limit=${limit}`)).statusCode, 400, `limit=${limit}`)
  }
  t.equal((await list(b, '?limit=500')).statusCode, 200)
  const anonymous = await b.app.inject({ url: '/internal/v1/events' })
  t.equal(anonymous.statusCode, 401)
  t.equal(anonymous.json().error.code, 'unauthorized')
})

t.test('Redis away: 503 storage_unavailable; events emitted meanwhile are appended once it is back', async t => {
  const b = await buildWithEvents(t)
  await withRedisStopped(b.redis, async () => {
    const res = await list(b)
    t.equal(res.statusCode, 503)
    t.equal(res.body.error?.code, 'storage_unavailable')
    t.doesNotThrow(() => b.events.emit('merchant.refresh_failed', 'm_1', { reason: 'upstream_unavailable' }))
  })
  t.ok(await until(async () => (await list(b)).body.items?.length === 1, 10_000), 'the held event reached the log')
})

t.test('webhooks from the app: signed with each WEBHOOK_SECRET, counted in /metrics; no secret in any event', async t => {
  const receiver = await startReceiver(t)
  const hooks = [webhookSecret(), webhookSecret()]
  const s = makeSecrets()
  const redis = await startRedis(t)
  const built = buildSimulator({ clientId: CLIENT_ID, clientSecret: s.clientSecret })
  const issued = recordIssuedTokens(built)
  await built.app.listen({ host: '127.0.0.1', port: 0 })
  t.teardown(async () => await built.app.close())
  const sim = { ...built, url: `http://127.0.0.1:${(built.app.server.address() as AddressInfo).port}` }
  const b = await buildWithEvents(t, {
    secrets: s,
    redis,
    simulator: sim,
    env: { WEBHOOK_URL: receiver.url, WEBHOOK_SECRET: hooks.map(h => h.text).join(',') }
  })
  t.equal((await onboard(b, 'm_hooks')).statusCode, 200, 'a merchant onboarded through the real flow')
  b.events.emit('merchant.connected', 'm_hooks', { onboarding_id: null, reference: 'acct-9' })
  await b.events.flush(5000)
  const logged = (await list(b)).body.items
  t.ok(await until(() => receiver.received.length >= logged.length, 10_000), 'delivered')

  for (const r of receiver.received) {
    for (const h of hooks) t.same(verify(h.text, r), logged.find(e => e.id === r.headers['webhook-id']), 'verifies under each secret, body = the logged event')
  }
  t.ok(await until(async () => (await b.app.inject({ url: '/metrics' })).body.includes('cybs_webhook_backlog{state="pending"} 0'), 5000), 'backlog gauge read on scrape')
  const metrics = (await b.app.inject({ url: '/metrics' })).body
  t.match(metrics, /cybs_webhook_attempts_total\{outcome="success"\} [1-9]/)
  t.match(metrics, /cybs_webhook_deliveries_total\{outcome="delivered"\} [1-9]/)
  t.match(metrics, /cybs_events_total\{type="merchant.connected"\} [1-9]/)

  // Every key of the events slot, and what the receiver got, against every secret and token.
  const direct = new Redis(redis.url)
  t.teardown(() => { direct.disconnect() })
  let stored = ''
  for (const key of await scanKeys(direct, `${b.config.redisKeyPrefix}{events}*`)) {
    const type = await direct.type(key)
    if (type === 'stream') stored += JSON.stringify(await direct.xrange(key, '-', '+'))
    else if (type === 'hash') stored += JSON.stringify(await direct.hgetall(key))
    else if (type === 'zset') stored += JSON.stringify(await direct.zrange(key, 0, -1))
  }
  const seen = stored + receiver.received.map(r => r.body + JSON.stringify(r.headers)).join('')
  t.ok(stored.includes('m_hooks'), 'the scan reads the stored events')
  t.ok(issued.size >= 2, 'tokens were issued')
  const forbidden = [s.clientSecret, s.apiSecret, s.otherApiSecret, s.encryptionKey, ...hooks.map(h => h.text), ...hooks.map(h => h.key.toString('base64')), ...issued]
  for (const secret of forbidden) t.notOk(seen.includes(secret), 'no secret or token stored or sent')
})

t.test('events emitted just before shutdown reach the log before the Redis client closes', async t => {
  const b = await buildWithEvents(t)
  for (let i = 0; i < 50; i++) b.events.emit('merchant.refreshed', `m_${i}`)
  await b.app.close()
  const direct = new Redis(b.redis.url)
  t.teardown(() => { direct.disconnect() })
  t.equal(await direct.xlen(`${b.config.redisKeyPrefix}{events}:stream`), 50)
})
