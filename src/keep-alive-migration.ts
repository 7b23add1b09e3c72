// Schedules the merchants stored before keep-alive existed (they have no entry): a one-time SCAN
// of the merchant records that adds the missing entries (ZADD NX: an entry a write made meanwhile
// wins). One replica runs it, under a lock it renews per batch; the position is saved after every
// batch, so a replica that dies mid-way leaves the rest to the next one that tries. Once it is
// done, a start-up costs one GET. To run it again (e.g. after a rolling upgrade during which old
// replicas onboarded merchants): DEL <REDIS_KEY_PREFIX>{keepalive}:migration.
import { randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import type { RedisClient } from './redis-client.js'
import type { RedisKeys } from './redis-keys.js'
import type { TokenStore } from './token-store.js'
import type { KeepAliveSchedule } from './keep-alive-schedule.js'
import { START, formatCursor, parseCursor, scanMerchants, scanTargets, type ScanPosition } from './key-space.js'
import { effectiveStatus } from './refresh-policy.js'
import { storageCall } from './storage-errors.js'

export const MIGRATION_DONE = 'done'

// KEYS[1] lock, KEYS[2] marker; ARGV: owner, marker value, lock ttl ms (0: release). Saves the
// position only while the lock is still this replica's.
// The marker of a finished run expires after ARGV[4] ms: the scan then runs again (a sweep that
// mends entries a failed schedule write left out).
const ADVANCE = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[2], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1`

/** How long a finished scan stands before the next one. */
export const SWEEP_EVERY_MS = 7 * 24 * 3600_000

export interface ScheduleMigrationOptions {
  redis: RedisClient
  keys: RedisKeys
  store: Pick<TokenStore, 'getMeta'>
  schedule: KeepAliveSchedule
  log: Pick<Logger, 'info' | 'warn'>
  /** SCAN COUNT per batch (500). */
  batch?: number
  /** Lock lifetime, renewed per batch (60 s). */
  lockMs?: number
}

export interface MigrationResult {
  /** busy: another replica holds the lock (or took it over mid-way). */
  state: 'done' | 'busy'
  /** Entries added by this call. */
  added: number
}

interface Commands { cybsKeepAliveAdvance: (lock: string, marker: string, owner: string, value: string, ttl: number, sweepMs: number) => Promise<number> }

export async function migrateSchedule (opts: ScheduleMigrationOptions): Promise<MigrationResult> {
  const { redis, keys, store, schedule } = opts
  const marker = keys.keepAliveKey('migration')
  const lock = keys.keepAliveKey('migration-lock')
  const lockMs = opts.lockMs ?? 60_000
  const saved = await storageCall(async () => await redis.get(marker))
  if (saved === MIGRATION_DONE) return { state: 'done', added: 0 }
  const owner = randomBytes(12).toString('base64url')
  if (await storageCall(async () => await redis.set(lock, owner, 'PX', lockMs, 'NX')) !== 'OK') return { state: 'busy', added: 0 }
  if (!('cybsKeepAliveAdvance' in redis)) redis.defineCommand('cybsKeepAliveAdvance', { numberOfKeys: 2, lua: ADVANCE })
  const cmd = redis as unknown as Commands

  const nodes = scanTargets(redis)
  let at: ScanPosition | null = (saved === null ? undefined : parseCursor(saved)) ?? START
  if (at.node >= nodes.length) at = START // the Cluster shrank: start over (ZADD NX makes it harmless)
  let added = 0
  if (saved === null) opts.log.info('keep-alive: scheduling the merchants stored before it existed')
  while (at !== null) {
    const { next, ids } = await scanMerchants(nodes, at, keys, opts.batch ?? 500)
    const metas = await Promise.all(ids.map(async id => await store.getMeta(id)))
    const t = schedule.now()
    added += await schedule.addMissing(metas
      .filter(m => m !== undefined && effectiveStatus(m, t).status === 'connected')
      .map(m => [m!.merchantId, schedule.dueAt(m!.refreshTokenExpiresAt)]))
    const value = next === null ? MIGRATION_DONE : formatCursor(next)
    if (await storageCall(async () => await cmd.cybsKeepAliveAdvance(lock, marker, owner, value, next === null ? 0 : lockMs, SWEEP_EVERY_MS)) !== 1) {
      return { state: 'busy', added }
    }
    at = next
  }
  opts.log.info({ added }, 'keep-alive: every stored merchant is scheduled')
  return { state: 'done', added }
}

/**
 * Runs the migration in the background until it is done, trying again every `retryMs` while
 * another replica holds it or Redis is away, then looks every `recheckMs` (an hour) whether the
 * weekly sweep is due. stop() waits for a batch under way.
 */
export function startScheduleMigration (opts: ScheduleMigrationOptions & { retryMs?: number, recheckMs?: number }): { stop: () => Promise<void>, done: () => boolean } {
  let stopped = false
  let finished = false
  let timer: NodeJS.Timeout | undefined
  let running: Promise<void> | undefined
  const attempt = (): void => {
    running = migrateSchedule(opts).then(r => { finished = r.state === 'done' }, (err: unknown) => {
      opts.log.warn({ err }, 'keep-alive: scheduling stored merchants failed; retrying')
    }).finally(() => {
      running = undefined
      if (!stopped) {
        timer = setTimeout(attempt, finished ? opts.recheckMs ?? 3600_000 : opts.retryMs ?? 60_000)
        timer.unref()
      }
    })
  }
  attempt()
  return {
    done: () => finished,
    async stop () {
      stopped = true
      clearTimeout(timer)
      await running
    }
  }
}
