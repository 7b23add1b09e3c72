// The audit trail of successful access-token lookups as summaries: one line per caller and
// merchant per interval (how many, first and last time) instead of one line per call. Lookups
// come many times a second per merchant; a line each would be mostly log volume. The timer that
// flushes it lives in plugins/audit.ts; every other internal call keeps its own line.
import type { Logger } from 'pino'

export interface LookupAudit {
  /** Counts one successful lookup of `merchantId` by `caller` on `route`. */
  record: (caller: string, route: string, merchantId: string) => void
  /** Writes the pending summaries now. */
  flush: () => void
}

interface Tally { caller: string, route: string, merchantId: string, count: number, first: number, last: number }

export function createLookupAudit (opts: { log: Pick<Logger, 'info'>, now: () => number }): LookupAudit {
  const { log, now } = opts
  // Keyed by caller, route and merchant; bounded by the merchants that exist (unknown ones are
  // 404s, which are not summarized).
  let pending = new Map<string, Tally>()

  return {
    record (caller, route, merchantId) {
      const key = `${caller}\n${route}\n${merchantId}`
      const t = now()
      const tally = pending.get(key)
      if (tally === undefined) pending.set(key, { caller, route, merchantId, count: 1, first: t, last: t })
      else {
        tally.count++
        tally.last = t
      }
    },
    flush () {
      if (pending.size === 0) return
      const done = pending
      pending = new Map()
      for (const t of done.values()) {
        log.info({
          caller: t.caller,
          merchant_id: t.merchantId,
          route: t.route,
          outcome: 'ok',
          count: t.count,
          first_at: new Date(t.first).toISOString(),
          last_at: new Date(t.last).toISOString()
        }, 'internal api lookups')
      }
    }
  }
}
