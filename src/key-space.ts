// Walking every merchant record with SCAN (never KEYS): on Cluster, every master in turn. A
// position names a master by its index in address order, so every replica and every run agrees
// on what a cursor means (ioredis lists masters in connection-pool order).
import type { Cluster, Redis } from 'ioredis'
import type { RedisClient } from './redis-client.js'
import type { RedisKeys } from './redis-keys.js'
import { storageCall } from './storage-errors.js'

/** A master (its index in address order; 0 off Cluster) and its SCAN cursor. */
export interface ScanPosition { node: number, scan: string }

export const START: ScanPosition = { node: 0, scan: '0' }
export const atStart = (p: ScanPosition): boolean => p.node === 0 && p.scan === '0'
/** A position as text (`node:scan`), as `npm run rotate-keys` prints and takes it. */
export const formatCursor = (p: ScanPosition): string => `${p.node}:${p.scan}`
export function parseCursor (text: string): ScanPosition | undefined {
  const m = /^(\d{1,4}):(\d{1,20})$/.exec(text)
  return m === null ? undefined : { node: Number(m[1]), scan: m[2] }
}

const address = (n: Redis): string => `${n.options.host ?? ''}:${n.options.port ?? ''}`

/** The servers to scan: the Cluster's masters in address order, or the one server. */
export function scanTargets (redis: RedisClient): Redis[] {
  return (redis as Cluster).isCluster === true
    ? (redis as Cluster).nodes('master').sort((x, y) => address(x) < address(y) ? -1 : address(x) > address(y) ? 1 : 0)
    : [redis as Redis]
}

/** One SCAN step of merchant keys: their ids, and the next position (null after the last master). */
export async function scanMerchants (nodes: Redis[], at: ScanPosition, keys: RedisKeys, count: number): Promise<{ next: ScanPosition | null, ids: string[] }> {
  const [scan, batch] = await storageCall(async () => await nodes[at.node].scan(at.scan, 'MATCH', keys.merchantPattern, 'COUNT', count))
  const ids = batch.map(k => keys.merchantIdOf(k)).filter((id): id is string => id !== undefined)
  const next = scan !== '0' ? { node: at.node, scan } : at.node + 1 < nodes.length ? { node: at.node + 1, scan: '0' } : null
  return { next, ids }
}
