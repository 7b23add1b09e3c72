// One replica's webhook worker for `npm run bench:webhooks`, as a child process (forked with IPC by
// bench/webhooks.ts): its own Redis connection, the service's worker (src/webhook-delivery.ts) with
// the options it is given. Messages: 'start', then 'stop' (answered with its tally, then it exits).
import { createRedisClient, waitReady } from '../src/redis-client.js'
import { createRedisKeys } from '../src/redis-keys.js'
import { createEventIds } from '../src/event-id.js'
import { createEventLog } from '../src/event-log.js'
import { createWebhookQueue } from '../src/webhook-queue.js'
import { createWebhookSigner } from '../src/webhook-signing.js'
import { createWebhookWorker, type AttemptOutcome, type WebhookWorkerOptions } from '../src/webhook-delivery.js'

export interface ReplicaSetup {
  redisUrl: string
  url: string
  /** base64: the webhook secret's key bytes, and the event-id key (the same ids as the runner's). */
  secret: string
  idKey: string
  options: Pick<WebhookWorkerOptions, 'pollMs' | 'concurrency' | 'timeoutMs' | 'leaseMs' | 'retryDelaysMs' | 'jitter'>
}

export interface Tally { attempts: Record<AttemptOutcome, number>, delivered: number, dead: number }

const quiet = { warn: () => {}, info: () => {}, error: () => {} }

async function main (): Promise<void> {
  const setup = JSON.parse(process.env.BENCH_WEBHOOK_REPLICA ?? '') as ReplicaSetup
  const keys = createRedisKeys('cybs:')
  const redis = createRedisClient({ mode: 'standalone', url: setup.redisUrl })
  redis.on('error', () => {})
  if (!await waitReady(redis, 10_000)) throw new Error('redis did not become ready')
  const ids = createEventIds([{ kid: 'k1', key: Buffer.from(setup.idKey, 'base64') }])
  const log = createEventLog(redis, keys, ids, { webhooks: true })
  const tally: Tally = { attempts: { success: 0, http_error: 0, timeout: 0, network_error: 0 }, delivered: 0, dead: 0 }
  const worker = createWebhookWorker({
    ...setup.options,
    queue: createWebhookQueue(redis, keys),
    signer: createWebhookSigner([Buffer.from(setup.secret, 'base64')]),
    url: setup.url,
    eventOf: log.eventOf,
    log: quiet,
    onAttempt: (o) => { tally.attempts[o]++ },
    onSettled: (o) => { tally[o]++ }
  })
  process.on('message', (m: string) => {
    if (m === 'start') worker.start()
    if (m === 'stop') {
      worker.stop().then(() => {
        redis.disconnect()
        process.send?.({ tally }, () => process.disconnect())
      }, (err: unknown) => { console.error(err); process.exit(1) })
    }
  })
  // The runner dies: so does the replica.
  process.on('disconnect', () => process.exit(0))
  process.send?.('ready')
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
