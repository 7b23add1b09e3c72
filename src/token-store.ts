// One Redis hash per merchant: the encrypted access and refresh tokens, the plaintext metadata of
// the status route, a version and a grant id. The grant id is new with every onboarding and
// survives nothing else: a refresh writes compare-and-set on version and grant (Lua), so a slower
// writer never overwrites a newer pair, and a refresh that outlives a delete (and a new
// onboarding of the same merchant) never writes. The record lives until its refresh token expires.
import { randomBytes } from 'node:crypto'
import type { Redis, Cluster } from 'ioredis'
import type { KeyRing } from './key-ring.js'
import type { RedisKeys } from './redis-keys.js'
import { storageCall } from './storage-errors.js'
import { EncryptionKeyUnavailableError, InvalidRequestError, StorageUnavailableError } from './errors.js'
import { REDIS_COMMAND_TIMEOUT_MS } from './redis-client.js'
import { KeyUnavailableError } from './key-ring.js'
import { effectiveStatus } from './refresh-policy.js'
import { scanMerchants, scanTargets, type ScanPosition } from './key-space.js'

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
  /** Counts stored merchants by status as of now (a full SCAN: for metrics, not the request path). */
  countByStatus: () => Promise<Record<MerchantStatus, number>>
}

/**
 * A record outlives its refresh token by this much, so that lookups of a merchant whose refresh
 * token expired answer 409 reauthorization_required rather than 404.
 */
export const RECORD_GRACE_MS = 30 * 24 * 3600 * 1000

// Changes are published on the events channel as `merchantId:version:grant` (`merchantId` on delete).
// KEYS[1] record; ARGV: expected version ('' = a new onboarding), expected grant, new grant,
// expire-at ms, channel, merchant id, field/value pairs...
const PUT_SCRIPT = `
local cur = redis.call('HMGET', KEYS[1], 'version', 'grant')
local grant = ARGV[3]
if ARGV[1] ~= '' then
  if cur[1] ~= ARGV[1] or (cur[2] or '') ~= ARGV[2] then return -1 end
  grant = ARGV[2]
end
local v = (tonumber(cur[1]) or 0) + 1
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'version', v, 'grant', grant, unpack(ARGV, 7))
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6] .. ':' .. v .. ':' .. grant)
return v`

// KEYS[1] record; ARGV: expected version, expected grant, status, channel, merchant id
const STATUS_SCRIPT = `
local cur = redis.call('HMGET', KEYS[1], 'version', 'grant')
if cur[1] ~= ARGV[1] or (cur[2] or '') ~= ARGV[2] then return -1 end
local v = tonumber(cur[1]) + 1
redis.call('HSET', KEYS[1], 'version', v, 'status', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5] .. ':' .. v .. ':' .. ARGV[2])
return v`

// KEYS[1] record, KEYS[2] lock; ARGV: channel, merchant id, deadline (ms, Redis's clock).
// A delete that reaches Redis after its caller gave up (answered 503) does nothing: it must not
// take effect behind the caller's back, after a stall or a paused server.
const DELETE_SCRIPT = `
local t = redis.call('TIME')
if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[3]) then return -1 end
local n = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
if n > 0 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return n`

interface StoreCommands {
  cybsPutRecord: (key: string, ...args: Array<string | number>) => Promise<number>
  cybsSetStatus: (key: string, ...args: Array<string | number>) => Promise<number>
  cybsDeleteMerchant: (key: string, lockKey: string, ...args: Array<string | number>) => Promise<number>
}

export function defineStoreCommands (redis: Redis | Cluster): void {
  if ('cybsPutRecord' in redis) return
  redis.defineCommand('cybsPutRecord', { numberOfKeys: 1, lua: PUT_SCRIPT })
  redis.defineCommand('cybsSetStatus', { numberOfKeys: 1, lua: STATUS_SCRIPT })
  redis.defineCommand('cybsDeleteMerchant', { numberOfKeys: 2, lua: DELETE_SCRIPT })
}

const num = (v: string | undefined): number => v === undefined || v === '' ? 0 : Number(v)

function toMeta (merchantId: string, h: Record<string, string>): MerchantMeta {
  return {
    merchantId,
    status: h.status === 'reauthorization_required' ? 'reauthorization_required' : 'connected',
    scope: h.scope ?? '',
    clientStatus: h.client_status ?? '',
    connectedAt: num(h.connected_at),
    accessTokenExpiresAt: num(h.access_token_expires_at),
    refreshTokenExpiresAt: num(h.refresh_token_expires_at),
    lastRefreshedAt: h.last_refreshed_at === undefined || h.last_refreshed_at === '' ? null : num(h.last_refreshed_at),
    version: num(h.version),
    grant: h.grant ?? ''
  }
}

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
  defineStoreCommands(redis)
  const cmd = redis as unknown as StoreCommands
  // The cursor names a master by its index, so every replica must order the masters alike:
  // ioredis lists them in connection-pool order (startup nodes first), hence the sort by address.

  async function hgetall (merchantId: string): Promise<Record<string, string> | undefined> {
    const h = await storageCall(async () => await redis.hgetall(keys.merchant(merchantId)))
    return h.version === undefined ? undefined : h
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
      const h = await hgetall(merchantId)
      if (h === undefined) return undefined
      // Never re-encrypted on read: a replica whose first key is new must not write records that
      // replicas still on the old key list cannot read (docs/operations.md, key rotation). Records
      // move to the first key when a refresh writes them, or with `npm run rotate-keys`.
      try {
        return {
          ...toMeta(merchantId, h),
          accessToken: keyRing.decrypt(h.access_token_enc, merchantId, 'access_token'),
          refreshToken: keyRing.decrypt(h.refresh_token_enc, merchantId, 'refresh_token')
        }
      } catch (err) {
        if (!(err instanceof KeyUnavailableError)) throw err
        opts.onKeyUnavailable?.()
        throw new EncryptionKeyUnavailableError()
      }
    },

    async getMeta (merchantId) {
      const h = await hgetall(merchantId)
      return h === undefined ? undefined : toMeta(merchantId, h)
    },

    async version (merchantId) {
      const v = await storageCall(async () => await redis.hget(keys.merchant(merchantId), 'version'))
      return v === null ? undefined : Number(v)
    },

    async getStatus (merchantId) {
      const meta = await store.getMeta(merchantId)
      return meta === undefined ? undefined : effectiveStatus(meta, now())
    },

    async put (r, expected) {
      const m = r.merchantId
      const fields = [
        'status', r.status,
        'scope', r.scope,
        'client_status', r.clientStatus,
        'connected_at', r.connectedAt,
        'access_token_expires_at', r.accessTokenExpiresAt,
        'refresh_token_expires_at', r.refreshTokenExpiresAt,
        'last_refreshed_at', r.lastRefreshedAt ?? '',
        'access_token_enc', keyRing.encrypt(r.accessToken, m, 'access_token'),
        'refresh_token_enc', keyRing.encrypt(r.refreshToken, m, 'refresh_token')
      ]
      const v = await storageCall(async () => await cmd.cybsPutRecord(keys.merchant(m),
        expected?.version ?? '', expected?.grant ?? '', randomBytes(12).toString('base64url'),
        r.refreshTokenExpiresAt + RECORD_GRACE_MS, keys.events, m, ...fields))
      return v < 0 ? undefined : v
    },

    async markReauthorizationRequired (merchantId, expected) {
      const v = await storageCall(async () => await cmd.cybsSetStatus(keys.merchant(merchantId), expected.version, expected.grant, 'reauthorization_required', keys.events, merchantId))
      return v < 0 ? undefined : v
    },

    async delete (merchantId) {
      // The deadline is the command timeout, on this host's clock: Redis's must agree (NTP).
      const deadline = Date.now() + REDIS_COMMAND_TIMEOUT_MS
      const n = await storageCall(async () => await cmd.cybsDeleteMerchant(keys.merchant(merchantId), keys.lock(merchantId), keys.events, merchantId, deadline))
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
      const metas = await Promise.all(ids.map(async id => await hgetall(id).then(h => h === undefined ? undefined : toMeta(id, h))))
      const t = now()
      return {
        items: metas.filter((m): m is MerchantMeta => m !== undefined).map(m => effectiveStatus(m, t)),
        nextCursor: at === null ? null : encodeCursor(at.node, at.scan, skip)
      }
    },

    async countByStatus () {
      const counts: Record<MerchantStatus, number> = { connected: 0, reauthorization_required: 0 }
      let cursor: string | undefined
      do {
        const page = await store.list(500, cursor)
        for (const m of page.items) counts[m.status]++
        cursor = page.nextCursor ?? undefined
      } while (cursor !== undefined)
      return counts
    }
  }
  return store
}
