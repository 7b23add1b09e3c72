// The audit trail of successful access-token lookups as summaries: one line per caller and
// merchant every interval (how many, first and last time) instead of one line per call. Lookups
// come hundreds of times a second per merchant; a line each was the largest cost of the hot path
// (bench/RESULTS.md) and mostly log volume. Every other internal call, and every failed lookup,
// keeps its own line (routes/internal). Pending counts are also written at shutdown.
import type { Logger } from 'pino'

export interface LookupAudit {
  /** Counts one successful lookup of `merchantId` by `caller`. */
  record: (caller: string, merchantId: string) => void
  /** Writes the pending summaries now (also done every interval). */
  flush: () => void
  /** Stops the timer and writes what is pending. */
  close: () => void
}

interface Tally { count: number, first: number, last: number }

export function createLookupAudit (opts: {
  log: Pick<Logger, 'info'>
  intervalMs: number
  route: string
  now: () => number
}): LookupAudit {
  const { log, now } = opts
  // caller → merchant → tally; bounded by the merchants that exist (unknown ones are 404s,
  // which are not counted here).
  let pending = new Map<string, Map<string, Tally>>()

  const flush = (): void => {
    if (pending.size === 0) return
    const done = pending
    pending = new Map()
    for (const [caller, merchants] of done) {
      for (const [merchantId, t] of merchants) {
        log.info({
          caller,
          merchant_id: merchantId,
          route: opts.route,
          outcome: 'ok',
          count: t.count,
          first_at: new Date(t.first).toISOString(),
          last_at: new Date(t.last).toISOString()
        }, 'internal api lookups')
      }
    }
  }
  const timer = setInterval(flush, opts.intervalMs)
  timer.unref()

  return {
    record (caller, merchantId) {
      let merchants = pending.get(caller)
      if (merchants === undefined) pending.set(caller, merchants = new Map())
      const t = now()
      const tally = merchants.get(merchantId)
      if (tally === undefined) merchants.set(merchantId, { count: 1, first: t, last: t })
      else {
        tally.count++
        tally.last = t
      }
    },
    flush,
    close () {
      clearInterval(timer)
      flush()
    }
  }
}
