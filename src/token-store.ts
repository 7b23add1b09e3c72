// One Redis hash per merchant: the encrypted access and refresh tokens, the plaintext metadata of
// the status route and a version. Writes are compare-and-set on the version (Lua), so a slower
// writer never overwrites a newer pair; the record lives until its refresh token expires.
import type { Redis, Cluster } from 'ioredis'
import type { KeyRing } from './key-ring.js'
import type { RedisKeys } from './redis-keys.js'
import { storageCall } from './storage-errors.js'
import { InvalidRequestError } from './errors.js'
import { effectiveStatus } from './refresh-policy.js'

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
}

export interface MerchantRecord extends MerchantMeta {
  accessToken: string
  refreshToken: string
}

export type NewRecord = Omit<MerchantRecord, 'version'>

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
   * Writes a whole record. With `expectedVersion` the write only happens if the stored version
   * is still that one; returns the new version, or undefined when another writer won.
   */
  put: (record: NewRecord, expectedVersion?: number) => Promise<number | undefined>
  /** Marks the merchant as needing a new onboarding (CAS on the version, tokens kept). */
  markReauthorizationRequired: (merchantId: string, expectedVersion: number) => Promise<number | undefined>
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

// Changes are published on the events channel as `merchantId:version` (`merchantId` on delete).
// KEYS[1] record; ARGV: expected version ('' = any), expire-at ms, channel, merchant id, field/value pairs...
const PUT_SCRIPT = `
local cur = redis.call('HGET', KEYS[1], 'version')
if ARGV[1] ~= '' and cur ~= ARGV[1] then return -1 end
local v = (tonumber(cur) or 0) + 1
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'version', v, unpack(ARGV, 5))
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4] .. ':' .. v)
return v`

// KEYS[1] record; ARGV: expected version, status, channel, merchant id
const STATUS_SCRIPT = `
local cur = redis.call('HGET', KEYS[1], 'version')
if cur ~= ARGV[1] then return -1 end
local v = tonumber(cur) + 1
redis.call('HSET', KEYS[1], 'version', v, 'status', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4] .. ':' .. v)
return v`

// KEYS[1] record, KEYS[2] lock; ARGV: channel, merchant id
const DELETE_SCRIPT = `
local n = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
if n > 0 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return n`

interface StoreCommands {
  cybsPutRecord: (key: string, ...args: Array<string | number>) => Promise<number>
  cybsSetStatus: (key: string, ...args: Array<string | number>) => Promise<number>
  cybsDeleteMerchant: (key: string, lockKey: string, ...args: string[]) => Promise<number>
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
    version: num(h.version)
  }
}

// List cursors are opaque to callers: node index (Cluster masters), SCAN cursor, keys to skip.
const encodeCursor = (node: number, scan: string, skip: number): string => Buffer.from(`${node}:${scan}:${skip}`).toString('base64url')
function decodeCursor (cursor: string): { node: number, scan: string, skip: number } {
  const m = /^(\d{1,4}):(\d{1,20}):(\d{1,6})$/.exec(cursor.length <= 64 ? Buffer.from(cursor, 'base64url').toString() : '')
  if (m === null) throw new InvalidRequestError('cursor is not valid')
  return { node: Number(m[1]), scan: m[2], skip: Number(m[3]) }
}

export function createTokenStore (redis: Redis | Cluster, keyRing: KeyRing, keys: RedisKeys, opts: { now?: () => number } = {}): TokenStore {
  const now = opts.now ?? Date.now
  defineStoreCommands(redis)
  const cmd = redis as unknown as StoreCommands
  // The cursor names a master by its index, so every replica must order the masters alike:
  // ioredis lists them in connection-pool order (startup nodes first), hence the sort by address.
  const nodeKey = (n: Redis): string => `${n.options.host ?? ''}:${n.options.port ?? ''}`
  const scanNodes = (): Redis[] => 'nodes' in redis && typeof (redis as Cluster).nodes === 'function' && (redis as Cluster).isCluster
    ? (redis as Cluster).nodes('master').sort((x, y) => nodeKey(x) < nodeKey(y) ? -1 : nodeKey(x) > nodeKey(y) ? 1 : 0)
    : [redis as Redis]

  async function hgetall (merchantId: string): Promise<Record<string, string> | undefined> {
    const h = await storageCall(async () => await redis.hgetall(keys.merchant(merchantId)))
    return h.version === undefined ? undefined : h
  }

  const store: TokenStore = {
    async get (merchantId) {
      const h = await hgetall(merchantId)
      if (h === undefined) return undefined
      const record = {
        ...toMeta(merchantId, h),
        accessToken: keyRing.decrypt(h.access_token_enc, merchantId, 'access_token'),
        refreshToken: keyRing.decrypt(h.refresh_token_enc, merchantId, 'refresh_token')
      }
      // Key rotation: a record written under an older key is rewritten under the current one
      // (compare-and-set, best effort) the first time it is read, so the old key can be retired.
      if (keyRing.isStale(h.access_token_enc) || keyRing.isStale(h.refresh_token_enc)) {
        store.put(record, record.version).catch(() => {})
      }
      return record
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

    async put (r, expectedVersion) {
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
      const v = await storageCall(async () => await cmd.cybsPutRecord(keys.merchant(m), expectedVersion ?? '', r.refreshTokenExpiresAt + RECORD_GRACE_MS, keys.events, m, ...fields))
      return v < 0 ? undefined : v
    },

    async markReauthorizationRequired (merchantId, expectedVersion) {
      const v = await storageCall(async () => await cmd.cybsSetStatus(keys.merchant(merchantId), expectedVersion, 'reauthorization_required', keys.events, merchantId))
      return v < 0 ? undefined : v
    },

    async delete (merchantId) {
      const n = await storageCall(async () => await cmd.cybsDeleteMerchant(keys.merchant(merchantId), keys.lock(merchantId), keys.events, merchantId))
      return n > 0
    },

    async list (limit, cursor) {
      const nodes = scanNodes()
      let { node, scan, skip } = cursor === undefined ? { node: 0, scan: '0', skip: 0 } : decodeCursor(cursor)
      if (node >= nodes.length) throw new InvalidRequestError('cursor is not valid')
      const ids: string[] = []
      // SCAN returns batches; a batch larger than what is left is resumed with `skip`, which
      // is exact while the key space is not rehashed between two pages.
      while (node < nodes.length) {
        const [next, batch] = await storageCall(async () => await nodes[node].scan(scan, 'MATCH', keys.merchantPattern, 'COUNT', Math.max(limit, 100)))
        const found = batch.map(k => keys.merchantIdOf(k)).filter((id): id is string => id !== undefined).slice(skip)
        const room = limit - ids.length
        if (found.length > room) {
          ids.push(...found.slice(0, room))
          skip += room
          break
        }
        ids.push(...found)
        skip = 0
        scan = next
        if (scan === '0') node++
        if (ids.length === limit) break
      }
      const metas = await Promise.all(ids.map(async id => await hgetall(id).then(h => h === undefined ? undefined : toMeta(id, h))))
      const t = now()
      return {
        items: metas.filter((m): m is MerchantMeta => m !== undefined).map(m => effectiveStatus(m, t)),
        nextCursor: node >= nodes.length ? null : encodeCursor(node, scan, skip)
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
