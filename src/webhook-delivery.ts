// The webhook worker each replica runs: every pollMs it claims due deliveries (src/webhook-queue.ts)
// up to its concurrency, POSTs each event signed (src/webhook-signing.ts) with a fresh timestamp,
// and settles it: delivered on a 2xx, else due again after a growing delay, until retryForMs have
// passed since the event (then dead). At least once: a receiver deduplicates on webhook-id.
import { Agent, request } from 'undici'
import type { WebhookQueue, Claimed } from './webhook-queue.js'
import type { WebhookSigner } from './webhook-signing.js'
import type { LifecycleEvent } from './event-log.js'

/** 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 2 h, then every 3 h. */
export const RETRY_DELAYS_MS = [5_000, 30_000, 120_000, 600_000, 1_800_000, 3_600_000, 7_200_000, 10_800_000]
export const RETRY_FOR_MS = 24 * 3600_000

export type AttemptOutcome = 'success' | 'http_error' | 'timeout' | 'network_error'

export interface WebhookWorkerOptions {
  queue: WebhookQueue
  signer: WebhookSigner
  url: string
  eventOf: (streamId: string, stored: string) => LifecycleEvent
  log: { warn: (obj: object, msg: string) => void, info: (obj: object, msg: string) => void, error: (obj: object, msg: string) => void }
  onAttempt?: (outcome: AttemptOutcome) => void
  onSettled?: (outcome: 'delivered' | 'dead') => void
  pollMs?: number
  concurrency?: number
  timeoutMs?: number
  /** Longer than timeoutMs: a claim outlives its attempt. */
  leaseMs?: number
  retryDelaysMs?: number[]
  retryForMs?: number
  /** Extra delay, as a share of each retry delay (spreads a burst of failures). */
  jitter?: number
  /** The signatures' clock (receivers compare it with theirs). */
  now?: () => number
}

export interface WebhookWorker {
  start: () => void
  /** Stops polling, aborts the attempts under way and hands their deliveries back (due now). */
  stop: () => Promise<void>
  /** Deliveries this replica is attempting. */
  inFlight: () => number
}

export function createWebhookWorker (opts: WebhookWorkerOptions): WebhookWorker {
  const pollMs = opts.pollMs ?? 1000
  const concurrency = opts.concurrency ?? 4
  const timeoutMs = opts.timeoutMs ?? 10_000
  const leaseMs = opts.leaseMs ?? 3 * timeoutMs
  const delays = opts.retryDelaysMs ?? RETRY_DELAYS_MS
  const retryForMs = opts.retryForMs ?? RETRY_FOR_MS
  const jitter = opts.jitter ?? 0.1
  const now = opts.now ?? Date.now
  if (leaseMs <= timeoutMs) throw new Error('the lease must be longer than the delivery timeout')
  const dispatcher = new Agent({ headersTimeout: timeoutMs, bodyTimeout: timeoutMs, connect: { timeout: timeoutMs } })
  const running = new Map<string, { abort: AbortController, done: Promise<void> }>()
  let timer: NodeJS.Timeout | undefined
  let polling: Promise<void> | undefined
  let saturated = false
  let stopped = true
  let redisDown = false

  async function attempt (event: LifecycleEvent, signal: AbortSignal): Promise<AttemptOutcome> {
    const body = JSON.stringify(event)
    try {
      const res = await request(opts.url, {
        method: 'POST',
        dispatcher,
        body,
        headers: { 'content-type': 'application/json', 'user-agent': 'cybs-oauth-broker', ...opts.signer.headers(event.id, body, new Date(now())) },
        signal: AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)])
      })
      await res.body.dump().catch(() => {})
      return res.statusCode >= 200 && res.statusCode < 300 ? 'success' : 'http_error'
    } catch (err) {
      const name = (err as Error).name
      return name === 'TimeoutError' || /timeout/i.test((err as { code?: string }).code ?? '') ? 'timeout' : 'network_error'
    }
  }

  async function deliver (job: Claimed, abort: AbortController): Promise<void> {
    let event: LifecycleEvent
    try {
      event = opts.eventOf(job.streamId, job.stored)
    } catch {
      // The body is gone or unreadable (changed by hand): nothing can be sent, ever.
      opts.log.error({ stream_id: job.streamId }, 'webhook delivery without a readable body; dropped')
      await opts.queue.settle(job, { outcome: 'done' }).catch(() => {})
      return
    }
    const outcome = await attempt(event, abort.signal)
    // Stopped mid-attempt: the delivery is handed back, not counted as a failure.
    if (abort.signal.aborted) {
      await opts.queue.settle(job, { outcome: 'release' }).catch(() => {})
      return
    }
    opts.onAttempt?.(outcome)
    const delay = delays[Math.min(job.attempts, delays.length - 1)] * (1 + jitter * Math.random())
    try {
      const settled = await opts.queue.settle(job, outcome === 'success' ? { outcome: 'done' } : { outcome: 'retry', delayMs: delay, retryForMs })
      if (settled === 'lost') opts.log.warn({ event_id: event.id }, 'webhook delivery lease expired before the attempt ended')
      else if (outcome === 'success') opts.onSettled?.('delivered')
      else if (settled === 'dead') {
        opts.onSettled?.('dead')
        opts.log.error({ event_id: event.id, type: event.type, attempts: job.attempts + 1 }, 'webhook delivery abandoned: retries exhausted')
      } else opts.log.warn({ event_id: event.id, type: event.type, outcome, attempts: job.attempts + 1, retry_in_ms: Math.round(delay) }, 'webhook delivery failed; will retry')
    } catch (err) {
      // The lease runs out and the delivery is attempted again: at least once.
      opts.log.warn({ err, event_id: event.id }, 'webhook delivery could not be settled')
    }
  }

  function launch (job: Claimed): void {
    const abort = new AbortController()
    const done = deliver(job, abort)
      .catch((err: Error) => opts.log.error({ err }, 'webhook delivery failed unexpectedly'))
      .finally(() => {
        running.delete(job.streamId)
        wake()
      })
    running.set(job.streamId, { abort, done })
  }

  /**
   * A slot freed while every slot was busy at the last claim: claim again now, not a poll
   * interval later (a burst of events drains at the receiver's pace, not the poll's).
   */
  function wake (): void {
    if (stopped || !saturated || polling !== undefined) return
    saturated = false
    if (timer !== undefined) clearTimeout(timer)
    timer = setTimeout(tick, 0)
  }

  async function poll (): Promise<void> {
    timer = undefined
    const room = concurrency - running.size
    let claimed = 0
    if (room > 0) {
      try {
        const jobs = await opts.queue.claim(room, leaseMs)
        claimed = jobs.length
        if (redisDown) opts.log.info({}, 'webhook worker: redis reachable again')
        redisDown = false
        for (const job of jobs) {
          if (stopped) await opts.queue.settle(job, { outcome: 'release' }).catch(() => {})
          else launch(job)
        }
      } catch (err) {
        if (!redisDown) opts.log.warn({ err }, 'webhook worker: cannot claim deliveries')
        redisDown = true
      }
    }
    // A full claim may have left more due: look again as soon as a slot frees (wake).
    saturated = running.size >= concurrency
    if (!stopped) timer = setTimeout(tick, claimed > 0 && claimed === room && !saturated ? 0 : pollMs)
  }

  function tick (): void {
    polling = poll().finally(() => { polling = undefined })
  }

  return {
    start () {
      if (!stopped) return
      stopped = false
      timer = setTimeout(tick, 0)
    },
    async stop () {
      stopped = true
      if (timer !== undefined) clearTimeout(timer)
      timer = undefined
      await polling
      const pending = [...running.values()]
      for (const r of pending) r.abort.abort()
      await Promise.all(pending.map(async r => await r.done))
      await dispatcher.close().catch(() => {})
    },
    inFlight: () => running.size
  }
}
