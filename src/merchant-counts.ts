// Merchants per stored status, kept by the store's write scripts (put, status change, delete) in
// the same script as the write, so the gauge reads counters instead of walking the key space. A
// script may only touch keys of one slot: off Cluster one hash holds the counts, on Cluster one
// hash per slot under a short hash tag that maps to that slot, and the gauge sums them with one
// script per master. A record counts once its tokens key exists (records written before the
// binary layout count from their next write). Records that expire (refresh token lapsed, plus the
// grace period) leave their count behind until `npm run recount` (src/recount-merchants.ts).
import { createHash } from 'node:crypto'
import calculateSlot from 'cluster-key-slot'
import type { Cluster } from 'ioredis'
import type { RedisClient } from './redis-client.js'
import type { RedisKeys } from './redis-keys.js'
import type { MerchantStatus } from './token-store.js'
import { storageCall } from './storage-errors.js'

export const SLOTS = 16384
export const STATUSES: readonly MerchantStatus[] = ['connected', 'reauthorization_required']

/** Lua helpers for the write scripts: a stored status as counted, and a counter step. */
export const COUNT_LUA = `
local function counted_status (s)
  if s == 'reauthorization_required' then return s end
  return 'connected'
end
local function count (key, status, n)
  if redis.call('HINCRBY', key, status, n) == 0 then redis.call('HDEL', key, status) end
end
`

// KEYS[1] counters; ARGV: status/delta pairs. Adds the deltas, dropping fields that reach 0.
const ADJUST_SCRIPT = `${COUNT_LUA}
for i = 1, #ARGV, 2 do
  if tonumber(ARGV[i + 1]) ~= 0 then count(KEYS[1], ARGV[i], tonumber(ARGV[i + 1])) end
end
return 1`

// Sums the counters of the slot ranges in ARGV (key head, then first, last, ...) on one master:
// keys of many slots, all local to that master (allowed by the flag; Redis refuses a slot it does
// not serve, and the gauge keeps its last values). The tags are in the script, loaded once per master.
let sum: { lua: string, sha: string } | undefined
function sumScript (): { lua: string, sha: string } {
  if (sum === undefined) {
    const tags = Array.from({ length: SLOTS }, (_, s) => `'${slotTag(s)}'`).join(',')
    const lua = `#!lua flags=no-writes,allow-cross-slot-keys
local tags = {${tags}}
local c, r = 0, 0
for i = 2, #ARGV, 2 do
  for s = tonumber(ARGV[i]), tonumber(ARGV[i + 1]) do
    local v = redis.call('HMGET', ARGV[1] .. tags[s + 1] .. '}', ${STATUSES.map(st => `'${st}'`).join(', ')})
    c = c + (tonumber(v[1]) or 0)
    r = r + (tonumber(v[2]) or 0)
  end
end
return {c, r}`
    sum = { lua, sha: createHash('sha1').update(lua).digest('hex') }
  }
  return sum
}

let slotTags: string[] | undefined
/** For every slot, a short string whose hash slot it is (computed once: a few hundred thousand CRCs). */
export function slotTag (slot: number): string {
  if (slotTags === undefined) {
    const tags: string[] = new Array<string>(SLOTS)
    let left = SLOTS
    for (let i = 0; left > 0; i++) {
      const tag = i.toString(36)
      const s = calculateSlot(tag)
      if (tags[s] === undefined) {
        tags[s] = tag
        left--
      }
    }
    slotTags = tags
  }
  return slotTags[slot]
}

export const isCluster = (redis: RedisClient): redis is Cluster => (redis as Cluster).isCluster === true

export type Counts = Record<MerchantStatus, number>

export interface MerchantCounts {
  /** The counters key a merchant's writes update (same slot as its record). */
  keyFor: (merchantId: string) => string
  /** Every counters key, with the slot it covers (undefined off Cluster). */
  all: () => Array<{ key: string, slot?: number }>
  /** The counts, summed over every counters key: one command per master whatever the merchants. */
  read: () => Promise<Counts>
  /** Adds deltas to one counters key atomically (the recount's correction). */
  adjust: (key: string, deltas: Counts) => Promise<void>
}

interface CountCommands { cybsAdjustCounts: (key: string, ...args: Array<string | number>) => Promise<number> }

const toCounts = (values: Array<string | null>): Counts => ({ connected: Number(values[0] ?? 0), reauthorization_required: Number(values[1] ?? 0) })

export function createMerchantCounts (redis: RedisClient, keys: RedisKeys): MerchantCounts {
  const cluster = isCluster(redis)
  if (!('cybsAdjustCounts' in redis)) redis.defineCommand('cybsAdjustCounts', { numberOfKeys: 1, lua: ADJUST_SCRIPT })
  const cmd = redis as unknown as CountCommands
  const single = keys.merchantCounts()
  const keyOfSlot = (slot: number): string => keys.merchantCounts(slotTag(slot))

  async function readCluster (c: Cluster): Promise<Counts> {
    // One script per master over the slots it serves, in slot ranges (see sumScript).
    const ranges = new Map<string, number[]>()
    for (let slot = 0; slot < SLOTS; slot++) {
      const owner = c.slots[slot]?.[0]
      if (owner === undefined) throw new Error(`no master known for slot ${slot}`)
      const r = ranges.get(owner) ?? []
      if (r.length > 0 && r[r.length - 1] === slot - 1) r[r.length - 1] = slot
      else r.push(slot, slot)
      ranges.set(owner, r)
    }
    const masters = new Map(c.nodes('master').map(n => [`${n.options.host ?? ''}:${n.options.port ?? ''}`, n]))
    const { lua, sha } = sumScript()
    const head = keys.merchantCounts('').slice(0, -1)
    const sums = await Promise.all([...ranges].map(async ([owner, r]) => {
      const node = masters.get(owner)
      if (node === undefined) throw new Error(`master ${owner} is not connected`)
      const run = async (): Promise<unknown> => await node.evalsha(sha, 0, head, ...r)
      return await run().catch(async (err: Error) => /^NOSCRIPT/.test(err.message) ? await node.eval(lua, 0, head, ...r) : await Promise.reject(err)) as [number, number]
    }))
    return { connected: sums.reduce((n, s) => n + s[0], 0), reauthorization_required: sums.reduce((n, s) => n + s[1], 0) }
  }

  return {
    keyFor: (merchantId) => cluster ? keyOfSlot(calculateSlot(keys.merchant(merchantId))) : single,
    all: () => cluster ? Array.from({ length: SLOTS }, (_, slot) => ({ key: keyOfSlot(slot), slot })) : [{ key: single }],
    read: async () => await storageCall(async () => cluster ? await readCluster(redis) : toCounts(await redis.hmget(single, ...STATUSES))),
    async adjust (key, deltas) {
      await storageCall(async () => await cmd.cybsAdjustCounts(key, ...STATUSES.flatMap(s => [s, deltas[s]])))
    }
  }
}
