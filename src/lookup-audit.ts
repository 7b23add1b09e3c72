// The audit trail of successful access-token lookups as summaries: one line per caller and
// merchant per interval (how many, first and last time) instead of one line per call. Lookups
// come many times a second per merchant; a line each would be mostly log volume. The timer that
// flushes it lives in plugins/audit.ts; every other internal call keeps its own line.
// Summaries are written a chunk per event-loop turn: with many merchants, one loop over them all
// would stall every request for as long as it takes.
import type { Logger } from 'pino'

export interface LookupAudit {
  /** Counts one successful lookup of `merchantId` by `caller` on `route`. */
  record: (caller: string, route: string, merchantId: string) => void
  /** Writes the pending summaries, in chunks between which other work runs; resolves once written. */
  flush: () => Promise<void>
}

export interface LookupAuditOptions {
  log: Pick<Logger, 'info'>
  now: () => number
  /** Summaries written per event-loop turn. */
  chunk?: number
  /** Pending summaries past which they are written without waiting for the timer. */
  maxPending?: number
}

export const AUDIT_CHUNK = 250
export const AUDIT_MAX_PENDING = 100_000

interface Tally { count: number, first: number, last: number }
type Pending = Map<string, Map<string, Map<string, Tally>>>

function * summaries (batch: Pending): Generator<[string, string, string, Tally]> {
  for (const [caller, routes] of batch) {
    for (const [route, merchants] of routes) {
      for (const [merchantId, t] of merchants) yield [caller, route, merchantId, t]
    }
  }
}

const nextTurn = async (): Promise<void> => { await new Promise(resolve => setImmediate(resolve)) }

export function createLookupAudit (opts: LookupAuditOptions): LookupAudit {
  const { log, now } = opts
  const chunk = opts.chunk ?? AUDIT_CHUNK
  const maxPending = opts.maxPending ?? AUDIT_MAX_PENDING
  // caller → route → merchant → tally, so that no key is built per lookup; bounded by the
  // merchants that exist (unknown ones are 404s, which are not summarized) and by maxPending.
  let pending: Pending = new Map()
  let pendingCount = 0
  // Batches handed to the writer, oldest first; whether it runs, and when it is done.
  const queue: Array<Iterator<[string, string, string, Tally]>> = []
  let writing = false
  let written = Promise.resolve()

  // Starts on the next turn: a flush may come from a lookup's own hook (maxPending).
  async function write (): Promise<void> {
    try {
      for (;;) {
        await nextTurn()
        let n = 0
        while (n < chunk && queue.length > 0) {
          const next = queue[0].next()
          if (next.done === true) {
            queue.shift()
            continue
          }
          const [caller, route, merchantId, t] = next.value
          log.info({
            caller,
            merchant_id: merchantId,
            route,
            outcome: 'ok',
            count: t.count,
            first_at: new Date(t.first).toISOString(),
            last_at: new Date(t.last).toISOString()
          }, 'internal api lookups')
          n++
        }
        if (queue.length === 0) return
      }
    } finally {
      // Synchronously with the last check of the queue: a later flush starts a writer of its own.
      writing = false
    }
  }

  function flush (): Promise<void> {
    if (pendingCount > 0) {
      queue.push(summaries(pending))
      pending = new Map()
      pendingCount = 0
    }
    if (!writing && queue.length > 0) {
      writing = true
      written = write()
    }
    return written
  }

  return {
    record (caller, route, merchantId) {
      let routes = pending.get(caller)
      if (routes === undefined) pending.set(caller, routes = new Map())
      let merchants = routes.get(route)
      if (merchants === undefined) routes.set(route, merchants = new Map())
      const t = now()
      const tally = merchants.get(merchantId)
      if (tally === undefined) {
        merchants.set(merchantId, { count: 1, first: t, last: t })
        if (++pendingCount >= maxPending) flush().catch(() => {})
      } else {
        tally.count++
        tally.last = t
      }
    },
    flush
  }
}
