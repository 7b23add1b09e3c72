// Background keep-alive: every tick (KEEPALIVE_INTERVAL_MS, jittered) a replica leases the due
// merchants of the schedule (src/keep-alive-schedule.ts), as many as it has free slots, and
// renews each through the token service's forced refresh (under the cross-replica lock). The work
// follows what is due, not the number of merchants: an idle tick is one Redis command. A claim
// that filled every slot is followed by another as soon as a slot frees, so a backlog drains at
// the pace of `concurrency` refreshes per replica. Only the token service marks a merchant (on
// invalid_grant); keep-alive then unschedules it.
import type { Logger } from 'pino'
import type { TokenService } from './token-service.js'
import type { TokenStore } from './token-store.js'
import type { KeepAliveSchedule } from './keep-alive-schedule.js'
import { MerchantNotFoundError, ReauthorizationRequiredError } from './errors.js'
import { effectiveStatus } from './refresh-policy.js'

/**
 * refreshed: renewed and rescheduled. not_due: an early entry, rescheduled. unscheduled: the
 * merchant is gone or no longer connected. reauthorization_required: CyberSource rejected the
 * grant (the token service marked it). failed: retried after a growing delay. not_extended:
 * refreshed, but the refresh token's expiry did not move out of the margin (retried the same way).
 */
export type KeepAliveOutcome = 'refreshed' | 'not_due' | 'unscheduled' | 'reauthorization_required' | 'failed' | 'not_extended'

export interface KeepAliveEvents {
  claimed?: (count: number) => void
  outcome?: (outcome: KeepAliveOutcome) => void
}

export interface KeepAliveOptions {
  schedule: KeepAliveSchedule
  store: Pick<TokenStore, 'getMeta'>
  service: Pick<TokenService, 'forceRefresh'>
  log: Pick<Logger, 'info' | 'warn' | 'error'>
  intervalMs: number
  /**
   * How long a claimed merchant is withheld from other replicas: longer than a forced refresh may
   * take (CYBS_TIMEOUT_MS + 2 s). A replica that dies leaves its claims to the others after it.
   */
  leaseMs: number
  /** Refreshes at a time on this replica (4). */
  concurrency?: number
  /** Retry delay after the first failure (30 s), doubled per failure up to backoffCapMs (1 h). */
  backoffBaseMs?: number
  backoffCapMs?: number
  /** A failure with less than this left calls onExpiring (7 days), once per merchant per day. */
  expiringWithinMs?: number
  onExpiring?: (merchantId: string, refreshTokenExpiresAt: number) => void
  /** A merchant stored as connected whose refresh token has run out is taken off the schedule. */
  onLapsed?: (merchantId: string, refreshTokenExpiredAt: number) => void
  events?: KeepAliveEvents
  /** Random numbers in [0, 1) for the tick jitter. */
  random?: () => number
}

export interface KeepAlive {
  /** Starts ticking. */
  start: () => void
  /** One claim and its work, now (tests, the benchmark); resolves with the number claimed. */
  tick: () => Promise<number>
  /** Stops ticking and waits for the work under way. */
  stop: () => Promise<void>
}

const DAY_MS = 24 * 3600_000
const TICK_JITTER = 0.1

export function createKeepAlive (opts: KeepAliveOptions): KeepAlive {
  const { schedule, store, service, log } = opts
  const now = schedule.now
  const random = opts.random ?? Math.random
  const events = opts.events ?? {}
  const concurrency = opts.concurrency ?? 4
  const baseMs = opts.backoffBaseMs ?? 30_000
  const capMs = opts.backoffCapMs ?? 3600_000
  const expiringWithinMs = opts.expiringWithinMs ?? 7 * DAY_MS
  const running = new Set<Promise<void>>()
  let claiming: Promise<Array<Promise<void>>> | undefined
  let timer: NodeJS.Timeout | undefined
  let started = false
  let stopped = false
  /** The last claim filled every free slot: more may be due. */
  let backlog = false
  let claimFailing = false

  async function retryLater (merchantId: string, lease: number, expiresAt: number | undefined): Promise<KeepAliveOutcome> {
    const next = await schedule.backoff(merchantId, lease, baseMs, capMs)
    if (next === undefined) return 'failed' // rewritten meanwhile: that write rescheduled it
    log.warn({ merchant_id: merchantId, failures: next.failures, retry_in_ms: next.delayMs }, 'keep-alive could not renew the refresh token; retrying later')
    if (expiresAt !== undefined && expiresAt - now() < expiringWithinMs && opts.onExpiring !== undefined && await schedule.once(merchantId, DAY_MS)) {
      try {
        opts.onExpiring(merchantId, expiresAt)
      } catch (err) {
        log.warn({ err, merchant_id: merchantId }, 'the refresh_token_expiring callback failed')
      }
    }
    return 'failed'
  }

  async function renew (merchantId: string, lease: number): Promise<KeepAliveOutcome> {
    const meta = await store.getMeta(merchantId)
    if (meta === undefined || effectiveStatus(meta, now()).status !== 'connected') {
      await schedule.settle(merchantId, lease, null, true)
      // Stored as connected, but its refresh token ran out (no renewal succeeded in time): the
      // merchant must connect again, and nothing else would tell the partner.
      if (meta?.status === 'connected') opts.onLapsed?.(merchantId, meta.refreshTokenExpiresAt)
      return 'unscheduled'
    }
    if (meta.refreshTokenExpiresAt - now() > schedule.renewBeforeMs) {
      await schedule.settle(merchantId, lease, schedule.dueAt(meta.refreshTokenExpiresAt), false)
      return 'not_due'
    }
    let fresh
    try {
      fresh = await service.forceRefresh(merchantId)
    } catch (err) {
      if (err instanceof ReauthorizationRequiredError || err instanceof MerchantNotFoundError) {
        await schedule.settle(merchantId, lease, null, true)
        return err instanceof MerchantNotFoundError ? 'unscheduled' : 'reauthorization_required'
      }
      await retryLater(merchantId, lease, meta.refreshTokenExpiresAt)
      return 'failed'
    }
    if (fresh.refreshTokenExpiresAt - now() <= schedule.renewBeforeMs) {
      // Refreshing again would not help: retried with the failures' growing delays.
      await retryLater(merchantId, lease, fresh.refreshTokenExpiresAt)
      return 'not_extended'
    }
    // The store's write has rescheduled it already (withKeepAlive); this covers a store without.
    await schedule.settle(merchantId, lease, schedule.dueAt(fresh.refreshTokenExpiresAt), true)
    return 'refreshed'
  }

  async function work (merchantId: string, lease: number): Promise<void> {
    let outcome: KeepAliveOutcome
    try {
      outcome = await renew(merchantId, lease)
    } catch (err) {
      // Redis or the record failed us: retried later, or after the lease if Redis is away.
      log.warn({ err, merchant_id: merchantId }, 'keep-alive renewal failed')
      outcome = await retryLater(merchantId, lease, undefined).catch(() => 'failed' as const)
    }
    events.outcome?.(outcome)
  }

  async function claim (): Promise<Array<Promise<void>>> {
    const free = concurrency - running.size
    if (free <= 0 || stopped) return []
    const lease = now() + opts.leaseMs
    let ids: string[]
    try {
      ids = await schedule.claim(free, lease)
      if (claimFailing) log.info('keep-alive claims work again')
      claimFailing = false
    } catch (err) {
      if (!claimFailing) log.warn({ err }, 'keep-alive could not claim due merchants; retrying every tick')
      claimFailing = true
      ids = []
    }
    events.claimed?.(ids.length)
    backlog = ids.length === free
    return ids.map(id => {
      const p: Promise<void> = work(id, lease).finally(() => {
        running.delete(p)
        if (backlog && started) claimOnce().catch(() => {})
      })
      running.add(p)
      return p
    })
  }

  /** One claim at a time per replica. */
  async function claimOnce (): Promise<Array<Promise<void>>> {
    if (claiming !== undefined) return await claiming
    claiming = claim().finally(() => { claiming = undefined })
    return await claiming
  }

  function scheduleTick (): void {
    if (stopped) return
    const delay = opts.intervalMs * (1 - TICK_JITTER + 2 * TICK_JITTER * random())
    timer = setTimeout(() => {
      claimOnce().finally(scheduleTick).catch(() => {})
    }, delay)
    timer.unref()
  }

  return {
    start () {
      if (started || stopped) return
      started = true
      scheduleTick()
    },
    async tick () {
      const batch = await claimOnce()
      await Promise.all(batch)
      return batch.length
    },
    async stop () {
      stopped = true
      clearTimeout(timer)
      await claiming
      await Promise.allSettled([...running])
    }
  }
}
