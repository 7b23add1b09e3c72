// The replica's outbox: emitted events wait here, in emit order, until the event log holds them.
// emit never throws and never waits on Redis; while Redis is away the outbox holds up to
// `maxHeld` events and retries, dropping the oldest (counted) beyond that.
import type { EventData, EventSink, EventType, PendingEvent } from './event-log.js'

export interface EventOutbox extends EventSink {
  /** Events not yet in the log. */
  held: () => number
  /** Resolves true once every event emitted so far is in the log, false after timeoutMs. */
  flush: (timeoutMs: number) => Promise<boolean>
  /** Tries to flush, then stops; later events are dropped (counted). */
  close: (timeoutMs: number) => Promise<void>
}

export interface EventOutboxOptions {
  append: (events: PendingEvent[]) => Promise<Array<string | Error>>
  log: { warn: (obj: object, msg: string) => void, info: (msg: string) => void, error: (obj: object, msg: string) => void }
  onAppended?: (event: PendingEvent) => void
  onDropped?: (count: number) => void
  now?: () => number
  maxHeld?: number
  batch?: number
  retryMs?: number
}

// Replies that are outages (retried); any other error reply is a defect of that one event (dropped).
const OUTAGE_REPLY = /^(LOADING|READONLY|CLUSTERDOWN|MASTERDOWN|TRYAGAIN|BUSY|OOM)\b/
const retriable = (err: Error): boolean => err.name !== 'ReplyError' || OUTAGE_REPLY.test(err.message)

export function createEventOutbox (opts: EventOutboxOptions): EventOutbox {
  const now = opts.now ?? Date.now
  const maxHeld = opts.maxHeld ?? 10_000
  const batch = opts.batch ?? 100
  const retryMs = opts.retryMs ?? 1000
  const queue: PendingEvent[] = []
  // The head of the queue being appended: never dropped, since its fate is not known yet.
  let inFlight = 0
  let timer: NodeJS.Timeout | undefined
  let draining = false
  let closed = false
  let failing = false
  const emptied = new Set<() => void>()

  const drop = (n: number): void => { if (n > 0) opts.onDropped?.(n) }

  const schedule = (delayMs: number): void => {
    if (draining || timer !== undefined || closed) return
    timer = setTimeout(() => { timer = undefined; drain().catch(() => {}) }, delayMs)
  }

  async function drain (): Promise<void> {
    draining = true
    let retry = false
    try {
      while (queue.length > 0 && !retry) {
        const events = queue.slice(0, batch)
        inFlight = events.length
        const results = await opts.append(events).catch((err: Error) => events.map(() => err))
        inFlight = 0
        const kept: PendingEvent[] = []
        results.forEach((r, i) => {
          if (typeof r === 'string') opts.onAppended?.(events[i])
          else if (retriable(r)) kept.push(events[i])
          else {
            opts.log.error({ err: r, type: events[i].type }, 'event could not be appended; dropped')
            drop(1)
          }
        })
        // Failures stay at the head, in their order, ahead of what was emitted meanwhile.
        queue.splice(0, events.length, ...kept)
        if (kept.length > 0) {
          retry = true
          if (!failing) opts.log.warn({ held: queue.length }, 'events held in memory: redis unavailable')
          failing = true
        } else if (failing) {
          failing = false
          opts.log.info('held events appended')
        }
      }
    } finally {
      inFlight = 0
      draining = false
    }
    if (queue.length === 0) for (const done of emptied) done()
    else schedule(retry ? retryMs : 0)
  }

  async function flush (timeoutMs: number): Promise<boolean> {
    if (queue.length === 0) return true
    return await new Promise<boolean>(resolve => {
      const done = (ok: boolean): void => { clearTimeout(t); emptied.delete(onEmpty); resolve(ok) }
      const onEmpty = (): void => done(true)
      const t = setTimeout(() => done(false), timeoutMs)
      emptied.add(onEmpty)
      // A retry waiting on its timer is tried now.
      if (timer !== undefined) {
        clearTimeout(timer)
        timer = undefined
        drain().catch(() => {})
      }
    })
  }

  return {
    emit (type: EventType, merchantId: string | null, data: EventData = {}) {
      if (closed) return drop(1)
      if (queue.length - inFlight >= maxHeld) {
        queue.splice(inFlight, 1)
        drop(1)
      }
      queue.push({ type, merchantId, occurredAt: now(), data: { ...data } })
      schedule(0)
    },
    held: () => queue.length,
    flush,
    async close (timeoutMs) {
      await flush(timeoutMs)
      closed = true
      if (timer !== undefined) clearTimeout(timer)
      timer = undefined
      drop(queue.length - inFlight)
      queue.splice(inFlight)
    }
  }
}
