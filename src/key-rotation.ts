// Moves merchant records to the first key of TOKEN_ENCRYPTION_KEYS while the service runs
// (`npm run rotate-keys`, docs/operations.md#key-rotation). It walks the key space page by page
// with SCAN (every master on Cluster), and rewrites a record under the merchant's refresh lock
// with a compare-and-set write, so it never races a refresh and never overwrites a newer record.
// A merchant whose lock is busy is retried later. Passes repeat from the start until one finds
// nothing left to rotate: only then is the rotation complete.
import { setTimeout as sleep } from 'node:timers/promises'
import type { Redis } from 'ioredis'
import type { KeyRing } from './key-ring.js'
import type { RedisClient } from './redis-client.js'
import type { RedisKeys } from './redis-keys.js'
import { createTokenStore, type TokenStore } from './token-store.js'
import { createRefreshLock, type RefreshLock } from './refresh-lock.js'
import { START, atStart, scanMerchants, scanTargets, type ScanPosition } from './key-space.js'
import { createRecordRotation, type Outcome, type Retryable } from './record-rotation.js'
import { StorageUnavailableError } from './errors.js'

export { START, formatCursor, parseCursor, type ScanPosition } from './key-space.js'

/** Keys asked of SCAN per page. */
export const PAGE_SIZE = 200
/** How long a merchant whose lock is busy is retried before it counts as failed. */
export const BUSY_TIMEOUT_MS = 60_000
/** Passes over the key space at most, the first one included. */
export const MAX_PASSES = 3
const CONCURRENCY = 8
const MAX_CONFLICTS = 5

export type FailureReason = 'unknown_key_id' | 'undecryptable' | 'unreadable' | 'busy' | 'conflict' | 'storage_unavailable' | 'error'

/** A record left under an old key; `detail` is a key id or an error name, never a secret. */
export interface Failure { merchantId: string, reason: FailureReason, detail?: string }

export interface Progress {
  pass: number
  /** Merchant records seen by this pass so far. */
  scanned: number
  rotated: number
  /** Merchants waiting for a retry (lock busy, lost a write, Redis blip). */
  pending: number
  failed: number
  /** Where this pass resumes; null once its scan has reached the end. */
  cursor: ScanPosition | null
  /** 'scan' while pages are read; 'wait' once only retries are left. */
  phase: 'scan' | 'wait'
}

export interface RotateOptions {
  /** Resume the first pass here (a cursor printed by an earlier run). */
  cursor?: ScanPosition
  /** Count only: no lock is taken and nothing is written. */
  dryRun?: boolean
  /** Stops after the page under way; the summary holds the cursor to resume from. */
  signal?: AbortSignal
  /** Stops the first pass after this many pages (the summary holds the cursor). */
  maxPages?: number
  busyTimeoutMs?: number
  onProgress?: (p: Progress) => void
}

export interface RotationSummary {
  dryRun: boolean
  /** Records seen by the first pass. */
  scanned: number
  /** Records the first pass found under the first key already. */
  current: number
  /** Records rewritten under the first key (every pass). */
  rotated: number
  /** Dry run: records under an old key that would be rotated. */
  stale: number
  /** Merchants whose lock was busy and that were settled on a retry. */
  busyRetried: number
  /** Writes that lost to a concurrent one (that record was then checked again). */
  conflicts: number
  /** Records deleted between the scan and the read. */
  gone: number
  /** Records still under an old key after the last pass, with the reason. */
  failed: Failure[]
  passes: number
  /** A pass over the whole key space found nothing under an old key. */
  complete: boolean
  /** Why the run stopped early, if it did; `cursor` then says where to resume. */
  stopped?: 'interrupted' | 'max_pages' | 'storage_unavailable'
  cursor: ScanPosition | null
  /** The key id records are rotated to. */
  targetKid: string
}

export interface KeyRotation {
  /** Merchant records from `from` to the end of the key space (SCAN of the keys only, no reads). */
  count: (from?: ScanPosition) => Promise<number>
  run: (opts?: RotateOptions) => Promise<RotationSummary>
}

export interface KeyRotationDeps {
  redis: RedisClient
  keys: RedisKeys
  keyRing: KeyRing
  /** The id of the first key (what isStale compares with), for the summary. */
  targetKid: string
  store?: TokenStore
  lock?: RefreshLock
}

interface PassResult {
  scanned: number
  current: number
  rotated: number
  stale: number
  gone: number
  busyRetried: number
  conflicts: number
  /** Records found under an old key at first sight. */
  needed: number
  failures: Failure[]
  cursor: ScanPosition | null
  stopped?: RotationSummary['stopped']
}

export function createKeyRotation (deps: KeyRotationDeps): KeyRotation {
  const { redis, keys, keyRing } = deps
  const rotateOne = createRecordRotation({
    redis,
    keys,
    keyRing,
    store: deps.store ?? createTokenStore(redis, keyRing, keys),
    lock: deps.lock ?? createRefreshLock({ redis, keys })
  })

  /** One SCAN step; retried a few times while Redis blips. */
  async function scanStep (nodes: Redis[], at: ScanPosition, count: number): Promise<{ next: ScanPosition | null, ids: string[] }> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await scanMerchants(nodes, at, keys, count)
      } catch (err) {
        if (!(err instanceof StorageUnavailableError) || attempt >= 3) throw err
        await sleep(500 * 2 ** attempt)
      }
    }
  }

  async function inParallel<T, R> (items: T[], fn: (item: T) => Promise<R>): Promise<R[]> {
    const out: R[] = new Array<R>(items.length)
    let next = 0
    const worker = async (): Promise<void> => {
      while (next < items.length) {
        const i = next++
        out[i] = await fn(items[i])
      }
    }
    await Promise.all(Array.from({ length: Math.min(CONCURRENCY, items.length) }, worker))
    return out
  }

  async function pass (n: number, from: ScanPosition, opts: RotateOptions): Promise<PassResult> {
    const dryRun = opts.dryRun === true
    const busyTimeoutMs = opts.busyTimeoutMs ?? BUSY_TIMEOUT_MS
    const r: PassResult = { scanned: 0, current: 0, rotated: 0, stale: 0, gone: 0, busyRetried: 0, conflicts: 0, needed: 0, failures: [], cursor: from }
    // Merchants to try again, with when and why.
    const pending = new Map<string, { reason: Retryable, since: number, attempts: number, due: number, wasBusy: boolean }>()
    const nodes = scanTargets(redis)
    if (from.node >= nodes.length) throw new RangeError('the cursor names a node this Redis does not have')

    const settle = (merchantId: string, o: Outcome, first: boolean): void => {
      const wait = pending.get(merchantId)
      if (o.kind === 'retry') {
        if (o.reason === 'conflict') r.conflicts++
        const p = wait ?? { reason: o.reason, since: Date.now(), attempts: 0, due: 0, wasBusy: false }
        p.reason = o.reason
        p.attempts++
        p.wasBusy ||= o.reason === 'busy'
        const expired = o.reason === 'conflict' ? p.attempts > MAX_CONFLICTS : Date.now() - p.since > busyTimeoutMs
        if (expired) {
          pending.delete(merchantId)
          r.failures.push({ merchantId, reason: o.reason })
          return
        }
        // A lost write is checked again at once; a busy lock with growing delays.
        p.due = Date.now() + (o.reason === 'conflict' ? 0 : Math.min(250 * 2 ** (p.attempts - 1), 5000))
        pending.set(merchantId, p)
        return
      }
      pending.delete(merchantId)
      if (wait?.wasBusy === true) r.busyRetried++
      if (o.kind === 'failed') r.failures.push({ merchantId, reason: o.reason, ...(o.detail === undefined ? {} : { detail: o.detail }) })
      else if (o.kind === 'rotated') r.rotated++
      else if (o.kind === 'stale') r.stale++
      else if (o.kind === 'gone') r.gone++
      else if (first) r.current++
    }

    const retryDue = async (): Promise<void> => {
      const now = Date.now()
      const due = [...pending].filter(([, p]) => p.due <= now).map(([id]) => id)
      const outcomes = await inParallel(due, async id => await rotateOne(id, dryRun))
      due.forEach((id, i) => settle(id, outcomes[i], false))
    }
    const report = (phase: Progress['phase']): void => opts.onProgress?.({
      pass: n, scanned: r.scanned, rotated: r.rotated, pending: pending.size, failed: r.failures.length, cursor: r.cursor, phase
    })

    let at: ScanPosition | null = from
    let pages = 0
    while (at !== null) {
      if (opts.signal?.aborted === true) return { ...r, cursor: at, stopped: 'interrupted' }
      if (n === 1 && opts.maxPages !== undefined && pages >= opts.maxPages) return { ...r, cursor: at, stopped: 'max_pages' }
      let step
      try {
        step = await scanStep(nodes, at, PAGE_SIZE)
      } catch (err) {
        if (!(err instanceof StorageUnavailableError)) throw err
        return { ...r, cursor: at, stopped: 'storage_unavailable' }
      }
      pages++
      r.scanned += step.ids.length
      const outcomes = await inParallel(step.ids, async id => await rotateOne(id, dryRun))
      step.ids.forEach((id, i) => {
        const o = outcomes[i]
        if (o.kind !== 'current' && o.kind !== 'gone') r.needed++
        settle(id, o, true)
      })
      await retryDue()
      at = r.cursor = step.next
      report('scan')
    }
    // The scan is done; what is left waits for its lock (or gives up after busyTimeoutMs).
    while (pending.size > 0) {
      report('wait')
      const wake = Math.min(...[...pending.values()].map(p => p.due))
      try {
        await sleep(Math.max(0, wake - Date.now()), undefined, { signal: opts.signal })
      } catch {
        return { ...r, cursor: null, stopped: 'interrupted', failures: [...r.failures, ...[...pending].map(([id, p]) => ({ merchantId: id, reason: p.reason }))] }
      }
      await retryDue()
    }
    report('wait')
    return r
  }

  return {
    async count (from = START) {
      const nodes = scanTargets(redis)
      let n = 0
      for (let at: ScanPosition | null = from; at !== null;) {
        const step = await scanStep(nodes, at, 1000)
        n += step.ids.length
        at = step.next
      }
      return n
    },

    async run (opts = {}) {
      const from = opts.cursor ?? START
      let last = await pass(1, from, opts)
      const summary: RotationSummary = {
        dryRun: opts.dryRun === true,
        scanned: last.scanned,
        current: last.current,
        rotated: last.rotated,
        stale: last.stale,
        busyRetried: last.busyRetried,
        conflicts: last.conflicts,
        gone: last.gone,
        failed: last.failures,
        passes: 1,
        complete: false,
        cursor: last.cursor,
        targetKid: deps.targetKid,
        ...(last.stopped === undefined ? {} : { stopped: last.stopped })
      }
      let fromStart = atStart(from)
      // Another pass from the start confirms (or finishes) the work, unless it cannot change
      // anything: nothing was rotated or retried and only hard failures are left.
      while (last.stopped === undefined && summary.passes < MAX_PASSES && !summary.dryRun) {
        const hopeless = last.failures.every(f => f.reason === 'unknown_key_id' || f.reason === 'undecryptable' || f.reason === 'unreadable' || f.reason === 'error')
        if (fromStart && (last.needed === 0 || (last.rotated === 0 && last.conflicts === 0 && hopeless))) break
        last = await pass(++summary.passes, START, opts)
        fromStart = true
        summary.rotated += last.rotated
        summary.busyRetried += last.busyRetried
        summary.conflicts += last.conflicts
        summary.gone += last.gone
        summary.failed = last.failures
        if (last.stopped !== undefined) {
          summary.stopped = last.stopped
          summary.cursor = last.cursor
        }
      }
      summary.complete = last.stopped === undefined && fromStart && last.needed === 0
      return summary
    }
  }
}
