// A merchant's record: a small metadata hash (status route, version, grant id) and its encrypted
// tokens beside it (src/record-codec.ts). The grant id is new with every onboarding and survives
// nothing else: a refresh writes compare-and-set on version and grant (Lua), so a slower writer
// never overwrites a newer pair, and a refresh that outlives a delete (and a new onboarding of the
// same merchant) never writes. The record lives until its refresh token expires (plus a grace).
import { randomBytes } from 'node:crypto'
import type { Redis, Cluster } from 'ioredis'
import type { KeyRing } from './key-ring.js'
import type { RedisKeys } from './redis-keys.js'
import { storageCall } from './storage-errors.js'
import { EncryptionKeyUnavailableError, InvalidRequestError, StorageUnavailableError } from './errors.js'
import { REDIS_COMMAND_TIMEOUT_MS } from './redis-client.js'
import { KeyRingError, KeyUnavailableError } from './key-ring.js'
import { effectiveStatus } from './refresh-policy.js'
import { scanMerchants, scanTargets, type ScanPosition } from './key-space.js'
import { META_FIELDS, decodeLegacyTokens, decodeTokens, encodeTokens, metaFields, toMeta } from './record-codec.js'
import { defineStoreCommands } from './record-scripts.js'
import { createMerchantCounts } from './merchant-counts.js'

export type MerchantStatus = 'connected' | 'reauthorization_required'

export interface MerchantMeta {
  merchantId: string
  status: MerchantStatus
  scope: string
  clientStatus: string
  connectedAt: number
  accessTokenExpiresAt: number
  refreshTokenExpiresAt: number
  lastRefreshedAt: number | null
  version: number
  /** The onboarding this record comes from (random; '' for records written before grant ids). */
  grant: string
}

/** What a compare-and-set write expects to find: the record it read. */
export type Expected = Pick<MerchantMeta, 'version' | 'grant'>

export interface MerchantRecord extends MerchantMeta {
  accessToken: string
  refreshToken: string
}

export type NewRecord = Omit<MerchantRecord, 'version' | 'grant'>

export interface TokenStore {
  /** Reads and decrypts; undefined when no record exists. */
  get: (merchantId: string) => Promise<MerchantRecord | undefined>
  /** Reads the metadata only (no decryption), as stored. */
  getMeta: (merchantId: string) => Promise<MerchantMeta | undefined>
  /** The record's version; undefined when no record exists. */
  version: (merchantId: string) => Promise<number | undefined>
  /** The status as of now (an expired refresh token reads as reauthorization_required). */
  getStatus: (merchantId: string) => Promise<MerchantMeta | undefined>
  /**
   * Writes a whole record. Without `expected` it is a new onboarding (a new grant id); with it,
   * the write only happens if the stored version and grant are still those, and keeps the
   * grant. Returns the new version, or undefined when another writer won (or the record is gone).
   */
  put: (record: NewRecord, expected?: Expected) => Promise<number | undefined>
  /** Marks the merchant as needing a new onboarding (CAS on version and grant, tokens kept). */
  markReauthorizationRequired: (merchantId: string, expected: Expected) => Promise<number | undefined>
  /** Removes every key of the merchant; false when there was no record. */
  delete: (merchantId: string) => Promise<boolean>
  /** A page of statuses as of now, with an opaque cursor for the next one. */
  list: (limit: number, cursor?: string) => Promise<{ items: MerchantMeta[], nextCursor: string | null }>
  /**
   * Counts stored merchants by their stored status, from counters the writes keep (a handful of
   * Redis commands; a connected merchant whose refresh token lapsed counts as connected).
   */
  countByStatus: () => Promise<Record<MerchantStatus, number>>
}

/**
 * A record outlives its refresh token by this much, so that lookups of a merchant whose refresh
 * token expired answer 409 reauthorization_required rather than 404.
 */
export const RECORD_GRACE_MS = 30 * 24 * 3600 * 1000

// List cursors are opaque to callers: node index (Cluster masters), SCAN cursor, keys to skip,
// sealed by the key ring so that only a cursor this service issued is ever parsed.
const CURSOR = 'list-cursor'
const MAX_SCAN_CURSOR = 2n ** 64n - 1n

export interface TokenStoreOptions {
  now?: () => number
  /** A record could not be read: its key id is not in TOKEN_ENCRYPTION_KEYS (for metrics). */
  onKeyUnavailable?: () => void
}

export function createTokenStore (redis: Redis | Cluster, keyRing: KeyRing, keys: RedisKeys, opts: TokenStoreOptions = {}): TokenStore {
  const now = opts.now ?? Date.now
  const cmd = defineStoreCommands(redis)
  const counts = createMerchantCounts(redis, keys)

  async function readMeta (merchantId: string): Promise<MerchantMeta | undefined> {
    return toMeta(merchantId, await storageCall(async () => await redis.hmget(keys.merchant(merchantId), ...META_FIELDS)))
  }

  const encodeCursor = (node: number, scan: string, skip: number): string => keyRing.seal(CURSOR, `${node}:${scan}:${skip}`)
  function decodeCursor (cursor: string): { node: number, scan: string, skip: number } {
    const m = /^(\d{1,4}):(\d{1,20}):(\d{1,6})$/.exec(keyRing.open(CURSOR, cursor) ?? '')
    // A SCAN cursor is an unsigned 64-bit number (defence in depth: a sealed cursor is ours).
    if (m === null || BigInt(m[2]) > MAX_SCAN_CURSOR) throw new InvalidRequestError('cursor is not valid')
    return { node: Number(m[1]), scan: m[2], skip: Number(m[3]) }
  }

  const store: TokenStore = {
    async get (merchantId) {
      const reply = await storageCall(async () => await cmd.cybsReadRecordBuffer(keys.merchant(merchantId), keys.merchantTokens(merchantId)))
      if (reply === null) return undefined
      const [fields, blob] = reply
      const text = fields.map(b => b === null ? null : b.toString('utf8'))
      const meta = toMeta(merchantId, text)
      if (meta === undefined) return undefined
      const [access, refresh] = text.slice(META_FIELDS.length)
      // Never re-encrypted on read: a replica whose first key is new must not write records that
      // replicas still on the old key list cannot read (docs/operations.md, key rotation). Records
      // move to the first key (and the binary layout) when a refresh writes them, or with
      // `npm run rotate-keys`.
      try {
        if (blob !== null) return { ...meta, ...decodeTokens(keyRing, merchantId, blob) }
        if (access !== null && refresh !== null) return { ...meta, ...decodeLegacyTokens(keyRing, merchantId, access, refresh) }
        throw new KeyRingError('cannot decrypt: the record has no tokens')
      } catch (err) {
        if (!(err instanceof KeyUnavailableError)) throw err
        opts.onKeyUnavailable?.()
        throw new EncryptionKeyUnavailableError()
      }
    },

    getMeta: readMeta,

    async version (merchantId) {
      const v = await storageCall(async () => await redis.hget(keys.merchant(merchantId), 'version'))
      return v === null ? undefined : Number(v)
    },

    async getStatus (merchantId) {
      const meta = await readMeta(merchantId)
      return meta === undefined ? undefined : effectiveStatus(meta, now())
    },

    async put (r, expected) {
      const m = r.merchantId
      const tokens = encodeTokens(keyRing, m, r)
      const v = await storageCall(async () => await cmd.cybsPutRecord(keys.merchant(m), keys.merchantTokens(m), counts.keyFor(m),
        expected?.version ?? '', expected?.grant ?? '', randomBytes(12).toString('base64url'),
        r.refreshTokenExpiresAt + RECORD_GRACE_MS, keys.events, m, tokens, r.status, ...metaFields(r)))
      return v < 0 ? undefined : v
    },

    async markReauthorizationRequired (merchantId, expected) {
      const v = await storageCall(async () => await cmd.cybsSetStatus(keys.merchant(merchantId), keys.merchantTokens(merchantId), counts.keyFor(merchantId),
        expected.version, expected.grant, 'reauthorization_required', keys.events, merchantId))
      return v < 0 ? undefined : v
    },

    async delete (merchantId) {
      // The deadline is the command timeout, on this host's clock: Redis's must agree (NTP).
      const deadline = Date.now() + REDIS_COMMAND_TIMEOUT_MS
      const n = await storageCall(async () => await cmd.cybsDeleteMerchant(keys.merchant(merchantId), keys.merchantTokens(merchantId), keys.lock(merchantId),
        counts.keyFor(merchantId), keys.events, merchantId, deadline))
      if (n < 0) throw new StorageUnavailableError()
      return n > 0
    },

    async list (limit, cursor) {
      const nodes = scanTargets(redis)
      const start = cursor === undefined ? { node: 0, scan: '0', skip: 0 } : decodeCursor(cursor)
      if (start.node >= nodes.length) throw new InvalidRequestError('cursor is not valid')
      let at: ScanPosition | null = start
      let skip = start.skip
      const ids: string[] = []
      // SCAN returns batches; a batch larger than what is left is resumed with `skip`, which
      // is exact while the key space is not rehashed between two pages.
      while (at !== null) {
        const { next, ids: batch } = await scanMerchants(nodes, at, keys, Math.max(limit, 100))
        const found = batch.slice(skip)
        const room = limit - ids.length
        if (found.length > room) {
          ids.push(...found.slice(0, room))
          skip += room
          break
        }
        ids.push(...found)
        skip = 0
        at = next
        if (ids.length === limit) break
      }
      // The metadata hashes only (sent back to back, one reply each), never the tokens.
      const metas = await Promise.all(ids.map(readMeta))
      const t = now()
      return {
        items: metas.filter((m): m is MerchantMeta => m !== undefined).map(m => effectiveStatus(m, t)),
        nextCursor: at === null ? null : encodeCursor(at.node, at.scan, skip)
      }
    },

    countByStatus: counts.read
  }
  return store
}
