// The cap on onboarding states: how many one client bucket, and all clients together, may start
// within a window of STATE_TTL_SECONDS, so the states alive in Redis stay under both caps.
//
// Each counter is one Redis hash of per-slice counts (the window cut into SLICES slices), summed
// over the slices that can still hold a live state: a sliding window, so the bound holds at every
// instant, where a fixed window would let twice the cap live across its boundary. Each check-
// and-count is one single-key script (the client's and the total's keys live in different Cluster
// slots, so they cannot share one). The client is counted first: a flood from one client that
// its own cap refuses never reaches, and so never exhausts, the total. When the total refuses,
// the client's count is given back, so a client is not charged for states it never got.
import type { RedisClient } from './redis-client.js'
import type { RedisKeys } from './redis-keys.js'
import { storageCall } from './storage-errors.js'

/** Slices per window: the counters overcount by at most one slice's worth. */
export const SLICES = 10

export type Admission =
  | { ok: true }
  | { ok: false, scope: 'client' | 'total', retryAfterSeconds: number }

export interface StateQuota {
  /** Counts one state for `bucket` (src/client-bucket.ts) and in total, unless a cap is reached. */
  admit: (bucket: string) => Promise<Admission>
}

export interface StateQuotaOptions {
  perClient: number
  total: number
  /** STATE_TTL_SECONDS: a state counts for as long as it can live. */
  windowSeconds: number
  now?: () => number
}

// KEYS[1] counter hash. ARGV: current slice, SLICES, cap, key TTL ms, slice ms, now ms.
// Returns -1 when counted, else the ms until enough old slices have left the window.
const ADMIT = `
local current = tonumber(ARGV[1])
local slices = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local raw = redis.call('HGETALL', KEYS[1])
local live = {}
local sum = 0
for i = 1, #raw, 2 do
  local slice = tonumber(raw[i])
  if slice == nil or slice < current - slices then
    redis.call('HDEL', KEYS[1], raw[i])
  else
    local n = tonumber(raw[i + 1])
    sum = sum + n
    live[#live + 1] = { slice, n }
  end
end
if sum < cap then
  redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return -1
end
table.sort(live, function (a, b) return a[1] < b[1] end)
local excess = sum - cap + 1
for _, entry in ipairs(live) do
  excess = excess - entry[2]
  if excess <= 0 then
    return math.max((entry[1] + slices + 1) * tonumber(ARGV[5]) - tonumber(ARGV[6]), 0)
  end
end
return 0
`

// KEYS[1] counter hash. ARGV[1] the slice counted by ADMIT. An emptied hash disappears with its
// last field; a hash that expired meanwhile is not recreated (it would have no TTL).
const REFUND = `
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
`

interface QuotaCommands {
  cybsStateQuotaAdmit: (key: string, slice: number, slices: number, cap: number, ttlMs: number, sliceMs: number, now: number) => Promise<number>
  cybsStateQuotaRefund: (key: string, slice: number) => Promise<number>
}

/**
 * Redis errors propagate as StorageUnavailableError (the 503 page): the cap is what bounds Redis
 * memory, so it closes rather than opens when it cannot count. With Redis away the route could not
 * store a state anyway; with one Cluster node away, an open cap would let states pile up on the rest.
 */
export function createStateQuota (redis: RedisClient, keys: Pick<RedisKeys, 'stateQuota'>, opts: StateQuotaOptions): StateQuota {
  const now = opts.now ?? Date.now
  const sliceMs = Math.ceil(opts.windowSeconds * 1000 / SLICES)
  // After this long without a count, every slice of the hash is outside the window.
  const ttlMs = (SLICES + 1) * sliceMs
  if (!('cybsStateQuotaAdmit' in redis)) {
    redis.defineCommand('cybsStateQuotaAdmit', { numberOfKeys: 1, lua: ADMIT })
    redis.defineCommand('cybsStateQuotaRefund', { numberOfKeys: 1, lua: REFUND })
  }
  const cmd = redis as unknown as QuotaCommands
  const totalKey = `${keys.stateQuota}total`
  const retryAfter = (ms: number): number => Math.max(1, Math.ceil(ms / 1000))

  return {
    async admit (bucket) {
      const at = now()
      const slice = Math.floor(at / sliceMs)
      const clientKey = `${keys.stateQuota}client:${bucket}`
      const client = await storageCall(async () => await cmd.cybsStateQuotaAdmit(clientKey, slice, SLICES, opts.perClient, ttlMs, sliceMs, at))
      if (client >= 0) return { ok: false, scope: 'client', retryAfterSeconds: retryAfter(client) }
      const total = await storageCall(async () => await cmd.cybsStateQuotaAdmit(totalKey, slice, SLICES, opts.total, ttlMs, sliceMs, at))
      if (total < 0) return { ok: true }
      // Best effort: a refund lost to a Redis blip costs the client one count for one window.
      await cmd.cybsStateQuotaRefund(clientKey, slice).catch(() => {})
      return { ok: false, scope: 'total', retryAfterSeconds: retryAfter(total) }
    }
  }
}
