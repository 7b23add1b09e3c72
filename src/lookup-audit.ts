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

interface Tally { count: number, first: number, last: number }

export function createLookupAudit (opts: { log: Pick<Logger, 'info'>, now: () => number }): LookupAudit {
  const { log, now } = opts
  // caller → route → merchant → tally, so that no key is built per lookup; bounded by the
  // merchants that exist (unknown ones are 404s, which are not summarized).
  let pending = new Map<string, Map<string, Map<string, Tally>>>()

  return {
    record (caller, route, merchantId) {
      let routes = pending.get(caller)
      if (routes === undefined) pending.set(caller, routes = new Map())
      let merchants = routes.get(route)
      if (merchants === undefined) routes.set(route, merchants = new Map())
      const t = now()
      const tally = merchants.get(merchantId)
      if (tally === undefined) merchants.set(merchantId, { count: 1, first: t, last: t })
      else {
        tally.count++
        tally.last = t
      }
    },
    flush () {
      if (pending.size === 0) return
      const done = pending
      pending = new Map()
      for (const [caller, routes] of done) {
        for (const [route, merchants] of routes) {
          for (const [merchantId, t] of merchants) {
            log.info({
              caller,
              merchant_id: merchantId,
              route,
              outcome: 'ok',
              count: t.count,
              first_at: new Date(t.first).toISOString(),
              last_at: new Date(t.last).toISOString()
            }, 'internal api lookups')
          }
        }
      }
    }
  }
}
