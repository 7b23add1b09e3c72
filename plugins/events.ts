// Decorates `events`: emit (fire-and-forget lifecycle events, appended in emit order through this
// replica's outbox), list (the event log) and backlog (webhook deliveries). With WEBHOOK_URL, runs
// this replica's webhook worker from ready to close. Needs `config`, `redis` and `metrics`.
import fp from 'fastify-plugin'
import { createEventIds } from '../src/event-id.js'
import { createEventLog, type EventLog, type EventSink } from '../src/event-log.js'
import { createEventOutbox } from '../src/event-outbox.js'
import { createWebhookQueue, type WebhookQueue } from '../src/webhook-queue.js'
import { createWebhookSigner } from '../src/webhook-signing.js'
import { createWebhookWorker, type WebhookWorker, type WebhookWorkerOptions } from '../src/webhook-delivery.js'

export interface Events extends EventSink {
  list: EventLog['list']
  backlog: WebhookQueue['backlog']
  /** Resolves true once every event emitted so far is in the log (false after timeoutMs). */
  flush: (timeoutMs: number) => Promise<boolean>
}

export interface EventsPluginOptions {
  /** Timings of the webhook worker (tests shorten them). */
  webhook?: Pick<WebhookWorkerOptions, 'pollMs' | 'concurrency' | 'timeoutMs' | 'leaseMs' | 'retryDelaysMs' | 'retryForMs' | 'jitter'>
  /** Outbox retry interval while Redis is away. */
  retryMs?: number
}

declare module 'fastify' {
  interface FastifyInstance {
    events: Events
  }
}

/** How long shutdown waits for held events to reach Redis. */
const CLOSE_FLUSH_MS = 2000

export default fp<EventsPluginOptions>(async (app, opts) => {
  const { config, metrics } = app
  const eventLog = createEventLog(app.redis, app.redisKeys, createEventIds(config.encryptionKeys), { webhooks: config.webhook !== undefined })
  const queue = createWebhookQueue(app.redis, app.redisKeys)
  const log = app.log.child({ component: 'events' })
  const outbox = createEventOutbox({
    append: eventLog.append,
    log,
    now: app.now,
    retryMs: opts.retryMs,
    onAppended: (e) => metrics.events.inc({ type: e.type }),
    onDropped: (n) => metrics.eventsDropped.inc(n)
  })
  let worker: WebhookWorker | undefined
  if (config.webhook !== undefined) {
    worker = createWebhookWorker({
      ...opts.webhook,
      queue,
      signer: createWebhookSigner(config.webhook.secrets),
      url: config.webhook.url,
      eventOf: eventLog.eventOf,
      log,
      onAttempt: (outcome) => metrics.webhookAttempts.inc({ outcome }),
      onSettled: (outcome) => metrics.webhookDeliveries.inc({ outcome })
    })
  }
  if (worker !== undefined) metrics.webhookBacklogSource = queue.backlog
  app.decorate<Events>('events', { emit: outbox.emit, list: eventLog.list, backlog: queue.backlog, flush: outbox.flush })
  app.addHook('onReady', async () => { worker?.start() })
  // Before the Redis client closes (hooks run in reverse order of registration).
  app.addHook('onClose', async () => {
    await worker?.stop()
    await outbox.close(CLOSE_FLUSH_MS)
  })
}, { name: 'events', dependencies: ['config', 'redis', 'metrics'] })
