// The lifecycle event log: a capped Redis Stream read oldest first with an `after` cursor (an
// event id). Appending an event and, when webhooks are on, queuing its delivery (the due set and
// the body, which outlives the stream's trimming) is one script in the {events} slot.
import type { Cluster, Redis } from 'ioredis'
import type { RedisKeys } from './redis-keys.js'
import type { EventIds } from './event-id.js'
import { InvalidRequestError } from './errors.js'
import { storageCall } from './storage-errors.js'

export const EVENT_TYPES = [
  'merchant.connected', 'merchant.reconnected', 'merchant.refreshed', 'merchant.refresh_failed',
  'merchant.reauthorization_required', 'merchant.refresh_token_expiring', 'merchant.disconnected', 'onboarding.failed'
] as const
export type EventType = typeof EVENT_TYPES[number]
/** Flat values only, and never a secret. */
export type EventData = Record<string, string | number | boolean | null>

export interface LifecycleEvent {
  id: string
  type: EventType
  occurred_at: string
  merchant_id: string | null
  data: EventData
}

/** What the service emits: the event before it has a place in the log. */
export interface PendingEvent {
  type: EventType
  merchantId: string | null
  occurredAt: number
  data: EventData
}

/** Where events go: fire-and-forget for callers. */
export interface EventSink { emit: (type: EventType, merchantId: string | null, data?: EventData) => void }

/** XADD MAXLEN ~ trims whole nodes only: the stream never holds fewer than this. */
export const EVENT_LOG_MIN_KEPT = 100_000

export interface EventLog {
  /** Appends in order, one script per event in one pipeline: each event's stream id, or the error that kept it out. */
  append: (events: PendingEvent[]) => Promise<Array<string | Error>>
  /** Events after `after` (an id issued by this service; else InvalidRequestError), oldest first. */
  list: (after: string | undefined, limit: number) => Promise<{ items: LifecycleEvent[], nextAfter: string | null }>
  /** The event a stream entry (or a queued delivery's body) holds. */
  eventOf: (streamId: string, stored: string) => LifecycleEvent
}

// KEYS[1] stream, KEYS[2] due deliveries, KEYS[3] delivery bodies; ARGV: min kept, stored event,
// '1' to queue a delivery. The delivery is due at once, by Redis's clock (one clock for every replica).
const APPEND = `
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2])
if ARGV[3] == '1' then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[2], string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)), id)
  redis.call('HSET', KEYS[3], id, ARGV[2])
end
return id`

/** In a pipeline, the reply comes with exec(). */
interface PipelinedAppend { cybsAppendEvent: (stream: string, due: string, bodies: string, minKept: number, stored: string, deliver: string) => unknown }

/** An event as stored: its fields, and the key id its event id is made under (src/event-id.ts). */
interface Stored { k: string, type: EventType, occurred_at: string, merchant_id: string | null, data: EventData }

export function createEventLog (redis: Redis | Cluster, keys: RedisKeys, ids: EventIds, opts: { webhooks: boolean, minKept?: number }): EventLog {
  if (!('cybsAppendEvent' in redis)) redis.defineCommand('cybsAppendEvent', { numberOfKeys: 3, lua: APPEND })
  const minKept = opts.minKept ?? EVENT_LOG_MIN_KEPT
  const deliver = opts.webhooks ? '1' : '0'
  const due = keys.eventKey('webhook-due')
  const bodies = keys.eventKey('webhook-body')

  const eventOf = (streamId: string, stored: string): LifecycleEvent => {
    const s = JSON.parse(stored) as Stored
    return { id: ids.issue(streamId, s.k), type: s.type, occurred_at: s.occurred_at, merchant_id: s.merchant_id, data: s.data }
  }

  return {
    eventOf,
    async append (events) {
      const pipeline = redis.pipeline() as unknown as ReturnType<Redis['pipeline']> & PipelinedAppend
      for (const e of events) {
        const stored: Stored = { k: ids.currentKid, type: e.type, occurred_at: new Date(e.occurredAt).toISOString(), merchant_id: e.merchantId, data: e.data }
        pipeline.cybsAppendEvent(keys.eventStream, due, bodies, minKept, JSON.stringify(stored), deliver)
      }
      let results: Array<[Error | null, unknown]> | null
      try {
        results = await pipeline.exec()
      } catch (err) {
        return events.map(() => err as Error)
      }
      return events.map((_, i) => {
        const [err, id] = results?.[i] ?? [new Error('no reply'), undefined]
        return err ?? String(id)
      })
    },
    async list (after, limit) {
      const from = after === undefined ? undefined : ids.open(after)
      if (after !== undefined && from === undefined) throw new InvalidRequestError('after is not an event id issued by this service')
      const entries = await storageCall(async () => await redis.xrange(keys.eventStream, from === undefined ? '-' : `(${from}`, '+', 'COUNT', limit))
      const items = entries.map(([streamId, fields]) => eventOf(streamId, fields[fields.indexOf('e') + 1]))
      // With no new event, the cursor given is handed back, so a poller keeps its place.
      return { items, nextAfter: items.at(-1)?.id ?? after ?? null }
    }
  }
}
