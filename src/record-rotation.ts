// One merchant record moved to the first encryption key and the binary layout (src/record-codec.ts),
// as `npm run rotate-keys` does it (src/key-rotation.ts walks the key space): under the merchant's
// refresh lock, checked again under it, and written back compare-and-set, so it never races a
// refresh nor overwrites a newer record. Outcomes name a reason and at most a key id or an error name, never a secret.
import { KID_PATTERN } from './config-parsers.js'
import type { KeyRing } from './key-ring.js'
import { KeyRingError } from './key-ring.js'
import { KID_PREFIX_BYTES, LEGACY_FIELDS, isStaleKid, kidOf } from './record-codec.js'
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

export function createRecordRotation (deps: { redis: RedisClient, keys: RedisKeys, keyRing: KeyRing, store: TokenStore, lock: RefreshLock }): (merchantId: string, dryRun: boolean) => Promise<Outcome> {
  const { redis, keys, keyRing, store, lock } = deps

  /** The record's key ids as stored (the old layout's text envelopes, or the tokens key's header). */
  async function kids (merchantId: string): Promise<{ version: string | null, kids: string[] | undefined, legacy: boolean }> {
    const [[version, access, refresh], head] = await storageCall(async () => await Promise.all([
      redis.hmget(keys.merchant(merchantId), 'version', ...LEGACY_FIELDS),
      redis.getrangeBuffer(keys.merchantTokens(merchantId), 0, KID_PREFIX_BYTES - 1)
    ]))
    if (head.length > 0) return { version, kids: [kidOf(head)], legacy: false }
    if (access !== null && refresh !== null) return { version, kids: [access, refresh].map(b => b.split('.', 2)[1] ?? ''), legacy: true }
    return { version, kids: undefined, legacy: false }
  }

  /** Whether the record is under the first key in the binary layout, without decrypting. */
  async function inspect (merchantId: string): Promise<{ kind: 'current' | 'stale' | 'gone' } | { kind: 'failed', reason: 'unreadable' }> {
    let seen
    try {
      seen = await kids(merchantId)
    } catch (err) {
      if (err instanceof KeyRingError) return { kind: 'failed', reason: 'unreadable' }
      throw err
    }
    if (seen.version === null) return { kind: 'gone' }
    if (seen.kids === undefined) return { kind: 'failed', reason: 'unreadable' }
    // A record of the old layout is rewritten whatever its key: the rewrite is its migration.
    return { kind: seen.legacy || seen.kids.some(k => isStaleKid(keyRing, k)) ? 'stale' : 'current' }
  }

  /** The key ids of the record that are not the first key (for a failure's detail). */
  async function oldKids (merchantId: string): Promise<string> {
    const found = (await kids(merchantId).catch(() => undefined))?.kids ?? []
    const stale = new Set(found.filter(k => isStaleKid(keyRing, k)))
    return [...stale].map(k => KID_PATTERN.test(k) ? k : '(malformed)').join(',')
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
