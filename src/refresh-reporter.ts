// What the partner hears about a merchant's refreshes, as lifecycle events: every success, every
// reauthorization and delete, and a failure once per episode and replica, not once per retry (an
// outage of CyberSource would otherwise fill the event log with the same merchants).
import type { EventSink } from './event-log.js'

/** A merchant whose refreshes keep failing is reported again after this long. */
export const FAILURE_EVENT_HOLD_MS = 10 * 60_000

export interface RefreshReporter {
  refreshed: (merchantId: string, expiries: { accessTokenExpiresAt: number, refreshTokenExpiresAt: number }) => void
  failed: (merchantId: string, reason: string) => void
  reauthorizationRequired: (merchantId: string, reason: string) => void
  disconnected: (merchantId: string) => void
}

export function createRefreshReporter (sink: EventSink | undefined, now: () => number): RefreshReporter {
  /** When each merchant's current failure episode was reported. */
  const reported = new Map<string, number>()
  const iso = (ms: number): string => new Date(ms).toISOString()
  return {
    refreshed (merchantId, { accessTokenExpiresAt, refreshTokenExpiresAt }) {
      reported.delete(merchantId)
      sink?.emit('merchant.refreshed', merchantId, { access_token_expires_at: iso(accessTokenExpiresAt), refresh_token_expires_at: iso(refreshTokenExpiresAt) })
    },
    failed (merchantId, reason) {
      const at = reported.get(merchantId)
      if (at !== undefined && now() - at <= FAILURE_EVENT_HOLD_MS) return
      reported.set(merchantId, now())
      sink?.emit('merchant.refresh_failed', merchantId, { reason })
    },
    reauthorizationRequired (merchantId, reason) {
      reported.delete(merchantId)
      sink?.emit('merchant.reauthorization_required', merchantId, { reason })
    },
    disconnected (merchantId) {
      reported.delete(merchantId)
      sink?.emit('merchant.disconnected', merchantId, {})
    }
  }
}
