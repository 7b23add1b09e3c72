// examples/webhook-receiver.ts run as a user runs it (plain `node`, type stripping, a clean
// environment), fed by the broker's own webhook worker over a private Redis: it verifies the raw
// body with standardwebhooks, prints each event once, and refuses what does not verify.
import t, { type Test } from 'tap'
import { spawn, type ChildProcessByStdio } from 'node:child_process'
import type { Readable } from 'node:stream'
import { once } from 'node:events'
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { request } from 'undici'
import type { Redis } from 'ioredis'
import { until } from '../helper.js'
import { startRedis } from '../helpers/redis.js'
import { webhookSecret } from '../helpers/webhook-receiver.js'
import { createRedisClient, waitReady } from '../../src/redis-client.js'
import { createRedisKeys } from '../../src/redis-keys.js'
import { createEventIds } from '../../src/event-id.js'
import { createEventLog } from '../../src/event-log.js'
import { createEventOutbox } from '../../src/event-outbox.js'
import { createWebhookQueue } from '../../src/webhook-queue.js'
import { createWebhookSigner } from '../../src/webhook-signing.js'
import { createWebhookWorker } from '../../src/webhook-delivery.js'

const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const EXAMPLE = fileURLToPath(new URL('../../examples/webhook-receiver.ts', import.meta.url))
const quiet = { warn: () => {}, info: () => {}, error: () => {} }

interface Running { url: string, stdout: () => string, stderr: () => string, child: ChildProcessByStdio<null, Readable, Readable> }

/** Starts the example on a free port; resolves once it prints its address. */
async function startExample (t: Test, env: Record<string, string>): Promise<Running> {
  const child = spawn(process.execPath, [EXAMPLE], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', PORT: '0', ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (s: string) => { stdout += s })
  child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s })
  t.teardown(async () => {
    if (child.exitCode === null) {
      child.kill('SIGTERM')
      await once(child, 'close')
    }
  })
  if (!await until(() => /listening on (\S+)\n/.test(stdout) || child.exitCode !== null, 20_000)) throw new Error('the example did not start')
  const url = /listening on (\S+)\n/.exec(stdout)?.[1] ?? ''
  return { url, stdout: () => stdout, stderr: () => stderr, child }
}

/** The broker's delivery path: event log, outbox and one webhook worker, signing with `keys`. */
async function startBroker (t: Test, url: string, keys: Buffer[]): Promise<{ emit: ReturnType<typeof createEventOutbox>['emit'], delivered: () => number, redis: Redis }> {
  const server = await startRedis(t)
  const redis = createRedisClient({ mode: 'standalone', url: server.url }) as Redis
  redis.on('error', () => {})
  await waitReady(redis, 5000)
  t.teardown(() => { redis.disconnect() })
  const redisKeys = createRedisKeys('example:')
  const log = createEventLog(redis, redisKeys, createEventIds([{ kid: 'k1', key: randomBytes(32) }]), { webhooks: true })
  const outbox = createEventOutbox({ append: log.append, log: quiet })
  let delivered = 0
  const worker = createWebhookWorker({
    queue: createWebhookQueue(redis, redisKeys),
    signer: createWebhookSigner(keys),
    url,
    eventOf: log.eventOf,
    log: quiet,
    pollMs: 20,
    onSettled: (o) => { if (o === 'delivered') delivered++ }
  })
  worker.start()
  t.teardown(async () => { await worker.stop(); await outbox.close(1000) })
  return { emit: outbox.emit, delivered: () => delivered, redis }
}

t.test('prints every event once, verified; refuses a forged or altered request', async t => {
  const secret = webhookSecret()
  const example = await startExample(t, { WEBHOOK_SECRET: secret.text })
  const broker = await startBroker(t, example.url, [secret.key])
  broker.emit('merchant.connected', 'm_1', { onboarding_id: 'onb_1', reference: 'acct-1' })
  broker.emit('merchant.reauthorization_required', 'm_2', { reason: 'refresh_token_rejected' })
  broker.emit('onboarding.failed', null, { reason: 'access_denied', onboarding_id: null, reference: null })
  t.ok(await until(() => broker.delivered() === 3, 10_000), 'the example acknowledged all three')
  const lines = example.stdout().split('\n').slice(1, -1)
  t.equal(lines.length, 3)
  // Deliveries run side by side: the order of arrival is not the order of the events.
  for (const line of [
    /^evt_\S+ merchant\.connected m_1 \{"onboarding_id":"onb_1","reference":"acct-1"\}$/,
    /^evt_\S+ merchant\.reauthorization_required m_2 \{"reason":"refresh_token_rejected"\}$/,
    /^evt_\S+ onboarding\.failed - \{"reason":"access_denied","onboarding_id":null,"reference":null\}$/
  ]) t.equal(lines.filter(l => line.test(l)).length, 1, `printed once: ${line.source.slice(8, 40)}`)
  t.equal(example.stderr(), '')

  // A request signed as the broker signs, sent twice: handled once.
  const body = JSON.stringify({ id: 'evt_1-0_test', type: 'merchant.disconnected', occurred_at: new Date().toISOString(), merchant_id: 'm_3', data: {} })
  const signed = createWebhookSigner([secret.key]).headers('evt_1-0_test', body, new Date())
  const post = async (headers: Record<string, string>, payload = body): Promise<number> =>
    (await request(example.url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: payload })).statusCode
  t.equal(await post(signed), 204)
  t.equal(await post(signed), 204, 'a redelivery is acknowledged')
  t.equal(example.stdout().split('\n').filter(l => l.startsWith('evt_1-0_test ')).length, 1, 'and handled once')

  t.equal(await post(signed, body.replace('m_3', 'm_4')), 400, 'an altered body is refused')
  t.equal(await post(signed, JSON.stringify(JSON.parse(body), null, 1)), 400, 'so is the same JSON re-serialized: the raw body counts')
  t.equal(await post(createWebhookSigner([webhookSecret().key]).headers('evt_1-0_test', body, new Date())), 400, 'another secret is refused')
  t.equal(await post({ ...signed, 'webhook-timestamp': String(Math.floor(Date.now() / 1000) - 600) }), 400, 'an old timestamp is refused')
  t.equal(await post({}), 400, 'no signature is refused')
  t.notOk(example.stdout().includes('m_4'), 'nothing refused was handled')
  t.match(example.stderr(), /^(webhook-receiver: rejected a request with an invalid signature\n){5}$/)
})

t.test('during a secret rotation the broker signs with both; a receiver that has either verifies', async t => {
  const old = webhookSecret()
  const next = webhookSecret()
  const example = await startExample(t, { WEBHOOK_SECRET: next.text })
  const broker = await startBroker(t, example.url, [old.key, next.key])
  broker.emit('merchant.refreshed', 'm_1', {})
  t.ok(await until(() => broker.delivered() === 1, 10_000))
  t.match(example.stdout(), /\nevt_\S+ merchant\.refreshed m_1 \{\}\n$/)
})

t.test('no WEBHOOK_SECRET: exits 1 naming it', async t => {
  const child = spawn(process.execPath, [EXAMPLE], { cwd: ROOT, env: { PATH: process.env.PATH ?? '' }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s })
  const [code] = await once(child, 'close') as [number | null]
  t.equal(code, 1)
  t.equal(stderr, 'webhook-receiver: WEBHOOK_SECRET is required (see the header of this file)\n')
})
