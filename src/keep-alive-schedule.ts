// The keep-alive schedule: one sorted set (member: merchant id, score: when keep-alive next looks
// at the merchant, epoch ms) and a hash of consecutive failures per merchant, both in the
// `{keepalive}` slot so that every script below is one command on Cluster too. withKeepAlive()
// keeps the schedule in step with the token store without touching it: every write of a connected
// merchant (onboarding or refresh) schedules it, a delete or a reauthorization unschedules it.
//
// Why a sorted set and not a job queue (BullMQ): an idle tick is one command (the claim script)
// whatever the number of merchants, a claim is atomic across replicas, a lease brings back what a
// dead replica claimed, and nothing is added to the dependencies. BullMQ needs its own blocking
// connection (maxRetriesPerRequest: null, at odds with this service's fail-fast client), keeps a
// queue in one Cluster slot just the same, and has open reports of Cluster workers that stop
// taking jobs (taskforcesh/bullmq#4138). Measured by bench/keepalive.ts (bench/RESULTS.md).
import type { Logger } from 'pino'
import type { Redis, Cluster } from 'ioredis'
import type { RedisKeys } from './redis-keys.js'
import type { TokenStore } from './token-store.js'
import { effectiveStatus } from './refresh-policy.js'
import { storageCall } from './storage-errors.js'

// KEYS[1] schedule; ARGV: now, limit, lease until. Due entries are leased: re-scored to the end
// of the lease, so that no other replica takes them, and they come back if this one dies.
const CLAIM = `
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[3], id) end
return ids`

// The follow-ups of a claim change an entry only while it still holds the claim's lease: a write
// of the merchant meanwhile (which re-scored it) or a later claim (after the lease ran out) wins.
const HELD = `
local function held ()
  local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
  return s and tonumber(s) == tonumber(ARGV[2])
end
`

// KEYS[1] schedule, KEYS[2] failures; ARGV: id, lease, next due ('' = unschedule), clear failures.
const SETTLE = `${HELD}
if ARGV[4] == '1' then redis.call('HDEL', KEYS[2], ARGV[1]) end
if not held() then return 0 end
if ARGV[3] == '' then redis.call('ZREM', KEYS[1], ARGV[1]) else redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) end
return 1`

// KEYS[1] schedule, KEYS[2] failures; ARGV: id, lease, now, base delay, cap. Next attempt after
// min(cap, base * 2^(failures - 1)); nil when the entry is no longer held.
const BACKOFF = `${HELD}
if not held() then return nil end
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
local delay = math.floor(math.min(tonumber(ARGV[5]), tonumber(ARGV[4]) * 2 ^ math.min(n - 1, 60)))
redis.call('ZADD', KEYS[1], tonumber(ARGV[3]) + delay, ARGV[1])
return {n, delay}`

// KEYS[1] schedule, KEYS[2] failures; ARGV: id.
const DROP = `
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])`

// KEYS[1] schedule; ARGV: now. Due entries, the earliest score, all entries.
const STATS = `
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {redis.call('ZCOUNT', KEYS[1], '-inf', ARGV[1]), first[2] or '', redis.call('ZCARD', KEYS[1])}`

interface Commands {
  cybsKeepAliveClaim: (schedule: string, now: number, limit: number, leaseUntil: number) => Promise<string[]>
  cybsKeepAliveSettle: (schedule: string, failures: string, id: string, lease: number, next: number | '', clear: '0' | '1') => Promise<number>
  cybsKeepAliveBackoff: (schedule: string, failures: string, id: string, lease: number, now: number, base: number, cap: number) => Promise<[number, number] | null>
  cybsKeepAliveDrop: (schedule: string, failures: string, id: string) => Promise<number>
  cybsKeepAliveStats: (schedule: string, now: number) => Promise<[number, string, number]>
}

function defineCommands (redis: Redis | Cluster): Commands {
  if (!('cybsKeepAliveClaim' in redis)) {
    redis.defineCommand('cybsKeepAliveClaim', { numberOfKeys: 1, lua: CLAIM })
    redis.defineCommand('cybsKeepAliveSettle', { numberOfKeys: 2, lua: SETTLE })
    redis.defineCommand('cybsKeepAliveBackoff', { numberOfKeys: 2, lua: BACKOFF })
    redis.defineCommand('cybsKeepAliveDrop', { numberOfKeys: 2, lua: DROP })
    redis.defineCommand('cybsKeepAliveStats', { numberOfKeys: 1, lua: STATS })
  }
  return redis as unknown as Commands
}

export interface ScheduleStats {
  /** Entries due now (overdue included). */
  due: number
  /** The earliest entry's time (epoch ms); undefined when the schedule is empty. */
  nextDueAt: number | undefined
  size: number
}

export interface KeepAliveSchedule {
  renewBeforeMs: number
  /** The schedule's clock. */
  now: () => number
  /**
   * When a merchant whose refresh token expires at `expiresAt` is due: renewBefore ahead of the
   * expiry, plus a random jitter of up to a quarter of renewBefore (a fleet onboarded at once is
   * spread), never in the past. The last quarter of the first half is left for retries.
   */
  dueAt: (refreshTokenExpiresAt: number) => number
  /** Schedules (or moves) a merchant. */
  add: (merchantId: string, dueAt: number) => Promise<void>
  /** Adds the merchant, or moves it earlier; never later (ZADD LT). */
  addEarlier: (merchantId: string, dueAt: number) => Promise<void>
  /** Schedules merchants that have no entry yet (ZADD NX); returns how many were added. */
  addMissing: (entries: Array<[merchantId: string, dueAt: number]>) => Promise<number>
  /** Unschedules a merchant and forgets its failures. */
  remove: (merchantId: string) => Promise<void>
  /** Leases up to `limit` due merchants until `leaseUntil`. */
  claim: (limit: number, leaseUntil: number) => Promise<string[]>
  /** Reschedules (a time) or unschedules (null) a merchant still under the lease `lease`. */
  settle: (merchantId: string, lease: number, next: number | null, clearFailures: boolean) => Promise<boolean>
  /** Counts a failure and reschedules after the growing delay; undefined when the lease was lost. */
  backoff: (merchantId: string, lease: number, baseMs: number, capMs: number) => Promise<{ failures: number, delayMs: number } | undefined>
  /** True at most once per `ttlMs` for a merchant (the refresh_token_expiring event's limiter). */
  once: (merchantId: string, ttlMs: number) => Promise<boolean>
  score: (merchantId: string) => Promise<number | undefined>
  stats: () => Promise<ScheduleStats>
}

export interface KeepAliveScheduleOptions {
  renewBeforeSeconds: number
  now?: () => number
  random?: () => number
}

export function createKeepAliveSchedule (redis: Redis | Cluster, keys: RedisKeys, opts: KeepAliveScheduleOptions): KeepAliveSchedule {
  const now = opts.now ?? Date.now
  const random = opts.random ?? Math.random
  const renewBeforeMs = opts.renewBeforeSeconds * 1000
  const cmd = defineCommands(redis)
  const key = keys.keepAliveKey('due')
  const failures = keys.keepAliveKey('failures')
  const call = storageCall

  return {
    renewBeforeMs,
    now,
    dueAt: (expiresAt) => Math.max(now(), expiresAt - renewBeforeMs + Math.floor(random() * (renewBeforeMs / 4))),
    async add (merchantId, dueAt) { await call(async () => await redis.zadd(key, dueAt, merchantId)) },
    async addEarlier (merchantId, dueAt) { await call(async () => await redis.zadd(key, 'LT', dueAt, merchantId)) },
    async addMissing (entries) {
      if (entries.length === 0) return 0
      return await call(async () => await redis.zadd(key, 'NX', ...entries.flatMap(([id, at]) => [at, id])))
    },
    async remove (merchantId) { await call(async () => await cmd.cybsKeepAliveDrop(key, failures, merchantId)) },
    claim: async (limit, leaseUntil) => await call(async () => await cmd.cybsKeepAliveClaim(key, now(), limit, leaseUntil)),
    settle: async (merchantId, lease, next, clear) =>
      await call(async () => await cmd.cybsKeepAliveSettle(key, failures, merchantId, lease, next ?? '', clear ? '1' : '0')) === 1,
    async backoff (merchantId, lease, baseMs, capMs) {
      const r = await call(async () => await cmd.cybsKeepAliveBackoff(key, failures, merchantId, lease, now(), baseMs, capMs))
      return r === null ? undefined : { failures: r[0], delayMs: r[1] }
    },
    once: async (merchantId, ttlMs) => await call(async () => await redis.set(keys.keepAliveKey(`expiring:${merchantId}`), '1', 'PX', ttlMs, 'NX')) === 'OK',
    async score (merchantId) {
      const s = await call(async () => await redis.zscore(key, merchantId))
      return s === null ? undefined : Number(s)
    },
    async stats () {
      const [due, first, size] = await call(async () => await cmd.cybsKeepAliveStats(key, now()))
      return { due, nextDueAt: first === '' ? undefined : Number(first), size }
    }
  }
}

type WarnLog = Pick<Logger, 'warn'>

/**
 * The token store, keeping the schedule in step. A write schedules the merchant before it is
 * delegated, never later than it was (a crash in between leaves an early entry, which the claimer
 * finds not yet due and reschedules), and again after it landed (so a delete that ran in between cannot leave a stored
 * merchant unscheduled). Unscheduling happens after a delete or a reauthorization, then checks the
 * record again (a new onboarding may have landed meanwhile). Schedule errors never fail a write:
 * tokens CyberSource issued are stored whatever the schedule's slot does; what the schedule then
 * misses, the claimer's re-reads and the weekly sweep (src/keep-alive-migration.ts) mend.
 */
export function withKeepAlive (store: TokenStore, schedule: KeepAliveSchedule, log?: WarnLog): TokenStore {
  const bestEffort = async (merchantId: string, work: () => Promise<unknown>): Promise<void> => {
    try {
      await work()
    } catch (err) {
      log?.warn({ err, merchant_id: merchantId }, 'keep-alive schedule not updated')
    }
  }
  /** Schedules the merchant from what is stored now (when it is connected). */
  const resync = async (merchantId: string): Promise<void> => {
    const meta = await store.getMeta(merchantId)
    if (meta !== undefined && effectiveStatus(meta, schedule.now()).status === 'connected') {
      await schedule.add(merchantId, schedule.dueAt(meta.refreshTokenExpiresAt))
    }
  }
  const unschedule = async (merchantId: string): Promise<void> => {
    await bestEffort(merchantId, async () => {
      await schedule.remove(merchantId)
      await resync(merchantId)
    })
  }

  // Every member delegated by name (not spread): the store may be a class instance.
  return {
    get: async (merchantId) => await store.get(merchantId),
    getMeta: async (merchantId) => await store.getMeta(merchantId),
    version: async (merchantId) => await store.version(merchantId),
    getStatus: async (merchantId) => await store.getStatus(merchantId),
    list: async (limit, cursor) => await store.list(limit, cursor),
    countByStatus: async () => await store.countByStatus(),
    async put (record, expected) {
      const id = record.merchantId
      const due = record.status === 'connected' ? schedule.dueAt(record.refreshTokenExpiresAt) : undefined
      // Before the write, only ever earlier: a write that then fails must not leave the merchant
      // scheduled by a refresh token that was never stored.
      if (due !== undefined) await bestEffort(id, async () => { await schedule.addEarlier(id, due) })
      let version
      try {
        version = await store.put(record, expected)
      } catch (err) {
        await bestEffort(id, async () => { await resync(id) })
        throw err
      }
      if (version === undefined) {
        // Another writer won, or the merchant was deleted: schedule from what is stored, if anything.
        await unschedule(id)
      } else if (due !== undefined) {
        await bestEffort(id, async () => { await schedule.add(id, due) })
      } else {
        await unschedule(id)
      }
      return version
    },
    async markReauthorizationRequired (merchantId, expected) {
      const version = await store.markReauthorizationRequired(merchantId, expected)
      if (version !== undefined) await unschedule(merchantId)
      return version
    },
    async delete (merchantId) {
      const deleted = await store.delete(merchantId)
      if (deleted) await unschedule(merchantId)
      return deleted
    }
  }
}
