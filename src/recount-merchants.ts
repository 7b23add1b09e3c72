// Rebuilds the merchant counters (src/merchant-counts.ts) from the records, for `npm run recount`:
// after records expired (their counts stay behind), after an upgrade from the old layout's
// release, or whenever the gauge looks wrong. The service keeps running: each counters key is
// corrected by a delta (what the records say minus what the key held when its walk began), so the
// writes made meanwhile stay counted. Off Cluster the one key's walk is a SCAN of every record;
// on Cluster each slot is walked on its own (CLUSTER GETKEYSINSLOT), in a few milliseconds, and
// the walk resumes from a slot number.
import type { Cluster, Redis } from 'ioredis'
import type { RedisClient } from './redis-client.js'
import type { RedisKeys } from './redis-keys.js'
import { START, scanMerchants, scanTargets, type ScanPosition } from './key-space.js'
import { STATUSES, SLOTS, createMerchantCounts, isCluster, type Counts } from './merchant-counts.js'
import { storageCall } from './storage-errors.js'

/** Slots walked at once on Cluster (the resume point is the first slot of the batch under way). */
const SLOT_BATCH = 64

export interface RecountOptions {
  /** Cluster: resume at this slot (an earlier run printed it). */
  fromSlot?: number
  /** Count and compare only: nothing is written. */
  dryRun?: boolean
  /** Stops after the batch under way; the summary says where to resume (Cluster). */
  signal?: AbortSignal
  onProgress?: (p: { merchants: number, slot?: number }) => void
}

export interface RecountSummary {
  /** Records counted (those in the binary layout, which the counters cover). */
  counted: Counts
  /** What the counters held before (over the keys walked). */
  before: Counts
  /** Counters keys that were (or, dry run, would be) corrected. */
  corrected: number
  complete: boolean
  /** Cluster, when stopped: the slot to resume from. */
  nextSlot?: number
}

const zero = (): Counts => ({ connected: 0, reauthorization_required: 0 })
const add = (a: Counts, b: Counts): void => { for (const s of STATUSES) a[s] += b[s] }
const minus = (a: Counts, b: Counts): Counts => ({ connected: a.connected - b.connected, reauthorization_required: a.reauthorization_required - b.reauthorization_required })
const same = (a: Counts, b: Counts): boolean => STATUSES.every(s => a[s] === b[s])

export async function recountMerchants (redis: RedisClient, keys: RedisKeys, opts: RecountOptions = {}): Promise<RecountSummary> {
  const counts = createMerchantCounts(redis, keys)
  const summary: RecountSummary = { counted: zero(), before: zero(), corrected: 0, complete: false }

  async function held (key: string): Promise<Counts> {
    const [c, r] = await storageCall(async () => await redis.hmget(key, ...STATUSES))
    return { connected: Number(c ?? 0), reauthorization_required: Number(r ?? 0) }
  }

  /** The merchants' stored statuses, as the write scripts count them (records with a tokens key). */
  async function tally (ids: string[]): Promise<Counts> {
    const found = await storageCall(async () => await Promise.all(ids.map(async id => await Promise.all([
      redis.hmget(keys.merchant(id), 'version', 'status'), redis.exists(keys.merchantTokens(id))
    ]))))
    const n = zero()
    for (const [[version, status], tokens] of found) {
      if (version !== null && tokens === 1) n[status === 'reauthorization_required' ? 'reauthorization_required' : 'connected']++
    }
    return n
  }

  async function correct (key: string, before: Counts, counted: Counts): Promise<void> {
    add(summary.before, before)
    add(summary.counted, counted)
    if (same(before, counted)) return
    summary.corrected++
    if (opts.dryRun !== true) await counts.adjust(key, minus(counted, before))
  }

  if (!isCluster(redis)) {
    const key = counts.all()[0].key
    const before = await held(key)
    const nodes = scanTargets(redis)
    const counted = zero()
    let seen = 0
    for (let at: ScanPosition | null = START; at !== null;) {
      if (opts.signal?.aborted === true) return summary
      const step = await scanMerchants(nodes, at, keys, 1000)
      add(counted, await tally(step.ids))
      seen += step.ids.length
      opts.onProgress?.({ merchants: seen })
      at = step.next
    }
    await correct(key, before, counted)
    return { ...summary, complete: true }
  }

  const masters = new Map(redis.nodes('master').map(n => [`${n.options.host ?? ''}:${n.options.port ?? ''}`, n]))
  let seen = 0
  async function recountSlot (slot: number, key: string): Promise<void> {
    const node: Redis | undefined = masters.get((redis as Cluster).slots[slot]?.[0] ?? '')
    if (node === undefined) throw new Error(`no master known for slot ${slot}`)
    const before = await held(key)
    const n = Number(await storageCall(async () => await node.call('CLUSTER', 'COUNTKEYSINSLOT', String(slot))))
    const inSlot = n === 0 ? [] : await storageCall(async () => await node.call('CLUSTER', 'GETKEYSINSLOT', String(slot), String(n)) as string[])
    const ids = inSlot.map(k => keys.merchantIdOf(k)).filter((id): id is string => id !== undefined)
    seen += ids.length
    await correct(key, before, await tally(ids))
  }
  const all = counts.all()
  for (let slot = opts.fromSlot ?? 0; slot < SLOTS; slot += SLOT_BATCH) {
    if (opts.signal?.aborted === true) return { ...summary, nextSlot: slot }
    await Promise.all(all.slice(slot, slot + SLOT_BATCH).map(async ({ key }, i) => await recountSlot(slot + i, key)))
    opts.onProgress?.({ merchants: seen, slot: Math.min(slot + SLOT_BATCH, SLOTS) })
  }
  return { ...summary, complete: true }
}
