// One merchant record moved to the first encryption key, as `npm run rotate-keys` does it
// (src/key-rotation.ts walks the key space): under the merchant's refresh lock, checked again
// under it, and written back compare-and-set, so it never races a refresh nor overwrites a newer
// record. Outcomes name a reason and at most a key id or an error name, never a secret.
import type { KeyRing } from './key-ring.js'
import { KeyRingError } from './key-ring.js'
import type { RedisClient } from './redis-client.js'
import type { RedisKeys } from './redis-keys.js'
import type { TokenStore } from './token-store.js'
import type { RefreshLock } from './refresh-lock.js'
import { storageCall } from './storage-errors.js'
import { EncryptionKeyUnavailableError, StorageUnavailableError } from './errors.js'
import type { FailureReason } from './key-rotation.js'

export type Retryable = 'busy' | 'conflict' | 'storage_unavailable'
export type Outcome =
  | { kind: 'current' | 'rotated' | 'gone' | 'stale' }
  | { kind: 'retry', reason: Retryable }
  | { kind: 'failed', reason: FailureReason, detail?: string }

const kidOf = (blob: string): string => blob.split('.', 2)[1] ?? ''

export function createRecordRotation (deps: { redis: RedisClient, keys: RedisKeys, keyRing: KeyRing, store: TokenStore, lock: RefreshLock }): (merchantId: string, dryRun: boolean) => Promise<Outcome> {
  const { redis, keys, keyRing, store, lock } = deps

  /** The record's key ids as stored, without decrypting. */
  async function inspect (merchantId: string): Promise<{ kind: 'current' | 'stale' | 'gone' } | { kind: 'failed', reason: 'unreadable' }> {
    const [version, access, refresh] = await storageCall(async () => await redis.hmget(keys.merchant(merchantId), 'version', 'access_token_enc', 'refresh_token_enc'))
    if (version === null) return { kind: 'gone' }
    if (access === null || refresh === null) return { kind: 'failed', reason: 'unreadable' }
    return { kind: keyRing.isStale(access) || keyRing.isStale(refresh) ? 'stale' : 'current' }
  }

  /** The key ids of the record's fields that are not the first key (for a failure's detail). */
  async function oldKids (merchantId: string): Promise<string> {
    const blobs: Array<string | null> = await redis.hmget(keys.merchant(merchantId), 'access_token_enc', 'refresh_token_enc').catch(() => [])
    const kids = new Set(blobs.filter((b): b is string => b !== null && keyRing.isStale(b)).map(kidOf))
    return [...kids].map(k => /^[A-Za-z0-9_.-]{1,32}$/.test(k) ? k : '(malformed)').join(',')
  }

  async function rotateOne (merchantId: string, dryRun: boolean): Promise<Outcome> {
    try {
      const seen = await inspect(merchantId)
      if (seen.kind !== 'stale') return seen
      if (dryRun) {
      // A read, as the service does: it tells whether the record's key is configured.
        return await store.get(merchantId) === undefined ? { kind: 'gone' } : { kind: 'stale' }
      }
      const held = await lock.acquire(merchantId)
      if (held === undefined) return { kind: 'retry', reason: 'busy' }
      try {
      // Checked again under the lock: a refresh that just ended may have moved it already.
        const now = await inspect(merchantId)
        if (now.kind !== 'stale') return now
        const record = await store.get(merchantId)
        if (record === undefined) return { kind: 'gone' }
        // Renewed before the write, as a refresh does, so the write lands while the lock is ours.
        if (!await lock.renew(held)) return { kind: 'retry', reason: 'busy' }
        const version = await store.put(record, { version: record.version, grant: record.grant })
        return version === undefined ? { kind: 'retry', reason: 'conflict' } : { kind: 'rotated' }
      } finally {
        await lock.release(held).catch(() => {}) // else it expires by itself
      }
    } catch (err) {
      if (err instanceof EncryptionKeyUnavailableError) return { kind: 'failed', reason: 'unknown_key_id', detail: await oldKids(merchantId) }
      if (err instanceof KeyRingError) return { kind: 'failed', reason: 'undecryptable' }
      if (err instanceof StorageUnavailableError) return { kind: 'retry', reason: 'storage_unavailable' }
      // Only the name: an unexpected error's message is not known to be free of secrets.
      return { kind: 'failed', reason: 'error', detail: (err as Error).name }
    }
  }

  return rotateOne
}
