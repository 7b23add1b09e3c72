// The refresh lock across replicas: one Redis key per merchant, taken with SET NX PX under a
// random owner value, renewed and released only by its owner (Lua compare-and-set). The TTL is
// short and the holder renews it while it works, so a holder that dies (SIGKILL, lost network)
// blocks the merchant for one TTL at most. A replica that does not get the lock waits for the
// holder's result: woken by the change messages, with polling as the fallback, until the
// record's version moves or the lock is free.
import { randomBytes } from 'node:crypto'
import type { RedisClient } from './redis-client.js'
import type { RedisKeys } from './redis-keys.js'
import { storageCall } from './storage-errors.js'

export interface LockHandle { readonly key: string, readonly owner: string }

export type WaitResult = 'updated' | 'free' | 'timeout'

/** How long a lock outlives its last renewal: the delay a dead holder causes at most. */
export const LOCK_TTL_MS = 10_000

export interface RefreshLock {
  readonly ttlMs: number
  /** The lock, or undefined when another owner holds it. */
  acquire: (merchantId: string) => Promise<LockHandle | undefined>
  /** Extends the lock to a full TTL again, if it is still ours. */
  renew: (lock: LockHandle) => Promise<boolean>
  /**
   * Renews the lock every third of its TTL until the returned function is called; `onLost` hears
   * when it is no longer ours (expired during a Redis outage, then taken by another replica).
   */
  keepAlive: (lock: LockHandle, onLost: () => void) => () => void
  /** Deletes the lock, if it is still ours. */
  release: (lock: LockHandle) => Promise<void>
  /**
   * Waits until the merchant's version is no longer `fromVersion` ('updated'), the lock is free
   * ('free'), or the deadline ('timeout').
   */
  waitForHolder: (merchantId: string, fromVersion: number, deadline: number, readVersion: (merchantId: string) => Promise<number | undefined>) => Promise<WaitResult>
  /** Wakes the waiters of a merchant (a change message arrived). */
  notify: (merchantId: string) => void
}

// KEYS[1] lock; ARGV[1] owner, ARGV[2] ttl ms
const RENEW_SCRIPT = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`

// KEYS[1] lock; ARGV[1] owner
const RELEASE_SCRIPT = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`

interface LockCommands {
  cybsReleaseLock: (key: string, owner: string) => Promise<number>
  cybsRenewLock: (key: string, owner: string, ttlMs: number) => Promise<number>
}

export function createRefreshLock (opts: { redis: RedisClient, keys: RedisKeys, ttlMs?: number, pollMs?: number, now?: () => number }): RefreshLock {
  const { redis, keys } = opts
  const ttlMs = opts.ttlMs ?? LOCK_TTL_MS
  const pollMs = opts.pollMs ?? 100
  const now = opts.now ?? Date.now
  if (!('cybsReleaseLock' in redis)) {
    redis.defineCommand('cybsReleaseLock', { numberOfKeys: 1, lua: RELEASE_SCRIPT })
    redis.defineCommand('cybsRenewLock', { numberOfKeys: 1, lua: RENEW_SCRIPT })
  }
  const cmd = redis as unknown as LockCommands
  const waiters = new Map<string, Set<() => void>>()

  /** Until a change message for the merchant, or pollMs. */
  const nap = async (merchantId: string): Promise<void> => {
    await new Promise<void>(resolve => {
      let set = waiters.get(merchantId)
      if (set === undefined) waiters.set(merchantId, set = new Set())
      const wake = (): void => { clearTimeout(timer); set.delete(wake); resolve() }
      const timer = setTimeout(wake, pollMs)
      set.add(wake)
    })
    if (waiters.get(merchantId)?.size === 0) waiters.delete(merchantId)
  }

  const renew = async (lock: LockHandle): Promise<boolean> =>
    await storageCall(async () => await cmd.cybsRenewLock(lock.key, lock.owner, ttlMs)) === 1

  return {
    ttlMs,
    async acquire (merchantId) {
      const lock = { key: keys.lock(merchantId), owner: randomBytes(16).toString('base64url') }
      try {
        const ok = await storageCall(async () => await redis.set(lock.key, lock.owner, 'PX', ttlMs, 'NX'))
        return ok === 'OK' ? lock : undefined
      } catch (err) {
        // The SET may still be applied after the client gave up on it: take it back, if it is ours.
        cmd.cybsReleaseLock(lock.key, lock.owner).catch(() => {})
        throw err
      }
    },
    renew,
    keepAlive (lock, onLost) {
      let lost = false
      const timer = setInterval(() => {
        renew(lock).then(ours => {
          if (!ours && !lost) {
            lost = true
            onLost()
          }
        }, () => {}) // Redis away: the next tick tries again
      }, Math.max(1, Math.floor(ttlMs / 3)))
      timer.unref()
      return () => clearInterval(timer)
    },
    async release (lock) {
      await storageCall(async () => await cmd.cybsReleaseLock(lock.key, lock.owner))
    },
    async waitForHolder (merchantId, fromVersion, deadline, readVersion) {
      while (now() < deadline) {
        await nap(merchantId)
        const [version, held] = await Promise.all([
          readVersion(merchantId),
          storageCall(async () => await redis.exists(keys.lock(merchantId)))
        ])
        if (version !== fromVersion) return 'updated'
        if (held === 0) return 'free'
      }
      return 'timeout'
    },
    notify (merchantId) {
      for (const wake of waiters.get(merchantId) ?? []) wake()
    }
  }
}
