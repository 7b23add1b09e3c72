// Onboarding links: made by the partner's portal through the internal API for one of its users,
// opened by the merchant's browser (any number of times until they expire), and completed by the
// callback. One small Redis hash per link; the URL's key is stored only as its SHA-256.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import type { Redis, Cluster } from 'ioredis'
import type { RedisKeys } from './redis-keys.js'
import { storageCall } from './storage-errors.js'

export type LinkStatus = 'pending' | 'connected' | 'failed' | 'expired'

export interface Link {
  id: string
  status: LinkStatus
  /** The merchant the link is bound to, or after success the merchant that connected. */
  merchantId: string | null
  reference: string | null
  failureReason: string | null
  createdAt: number
  expiresAt: number
  completedAt: number | null
}

export type LinkOpening = { kind: 'open', link: Link } | { kind: 'not_found' } | { kind: 'expired' } | { kind: 'connected', link: Link }

export interface LinkStore {
  create: (opts: { merchantId?: string, reference?: string }) => Promise<{ link: Link, key: string }>
  get: (id: string) => Promise<Link | undefined>
  /** A visit of the link's URL: checks its key (constant time) and its life. */
  open: (id: string, key: string) => Promise<LinkOpening>
  /**
   * Records an onboarding's end. A connected link stays connected, to its merchant: false when
   * the outcome was not recorded (another onboarding of the link connected first, or it is gone).
   */
  complete: (id: string, outcome: { merchantId: string } | { reason: string }) => Promise<boolean>
}

const ID_PATTERN = /^onb_[A-Za-z0-9_-]{22}$/
const KEY_PATTERN = /^[A-Za-z0-9_-]{43}$/
/** A link's record outlives its expiry by this much, so the portal can still read the outcome. */
export const LINK_RETENTION_SECONDS = 30 * 24 * 3600

const sha256 = (s: string): Buffer => createHash('sha256').update(s).digest()

// KEYS: link. ARGV: status, merchant id or '', failure reason or '', completed at (ms).
// Returns 1 when applied; 0 when the link is gone or already connected (it never changes then).
const COMPLETE = `
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'status') == 'connected' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'failure_reason', ARGV[3], 'completed_at', ARGV[4])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'merchant_id', ARGV[2]) end
return 1
`

type Scripted = (Redis | Cluster) & {
  completeLink: (key: string, status: string, merchantId: string, reason: string, at: string) => Promise<number>
}

function toLink (id: string, h: Record<string, string>, now: number): Link {
  const expiresAt = Number(h.expires_at)
  const stored = h.status as LinkStatus
  const status = stored !== 'connected' && now >= expiresAt ? 'expired' : stored
  return {
    id,
    status,
    merchantId: h.merchant_id === '' || h.merchant_id === undefined ? null : h.merchant_id,
    reference: h.reference === '' || h.reference === undefined ? null : h.reference,
    failureReason: h.failure_reason === '' || h.failure_reason === undefined ? null : h.failure_reason,
    createdAt: Number(h.created_at),
    expiresAt,
    completedAt: h.completed_at === '' || h.completed_at === undefined ? null : Number(h.completed_at)
  }
}

export function createLinkStore (redis: Redis | Cluster, keys: RedisKeys, opts: { ttlSeconds: number, now?: () => number }): LinkStore {
  const now = opts.now ?? Date.now
  if (typeof (redis as unknown as Partial<Scripted>).completeLink !== 'function') redis.defineCommand('completeLink', { numberOfKeys: 1, lua: COMPLETE })
  const scripted = redis as unknown as Scripted

  async function read (id: string): Promise<Record<string, string> | undefined> {
    if (!ID_PATTERN.test(id)) return undefined
    const h = await storageCall(async () => await redis.hgetall(keys.link(id)))
    return h.status === undefined ? undefined : h
  }

  return {
    async create ({ merchantId, reference }) {
      const id = `onb_${randomBytes(16).toString('base64url')}`
      const key = randomBytes(32).toString('base64url')
      const createdAt = now()
      const expiresAt = createdAt + opts.ttlSeconds * 1000
      const fields = {
        status: 'pending',
        key_hash: sha256(key).toString('base64url'),
        merchant_id: merchantId ?? '',
        reference: reference ?? '',
        failure_reason: '',
        created_at: String(createdAt),
        expires_at: String(expiresAt),
        completed_at: ''
      }
      const k = keys.link(id)
      await storageCall(async () => await redis.multi().hset(k, fields).expire(k, opts.ttlSeconds + LINK_RETENTION_SECONDS).exec())
      return { link: toLink(id, fields, createdAt), key }
    },

    async get (id) {
      const h = await read(id)
      return h === undefined ? undefined : toLink(id, h, now())
    },

    async open (id, key) {
      const h = await read(id)
      if (h === undefined || !KEY_PATTERN.test(key)) return { kind: 'not_found' }
      const expected = Buffer.from(h.key_hash ?? '', 'base64url')
      const given = sha256(key)
      if (expected.length !== given.length || !timingSafeEqual(expected, given)) return { kind: 'not_found' }
      const link = toLink(id, h, now())
      if (link.status === 'connected') return { kind: 'connected', link }
      if (link.status === 'expired') return { kind: 'expired' }
      return { kind: 'open', link }
    },

    async complete (id, outcome) {
      const ok = 'merchantId' in outcome
      return await storageCall(async () => await scripted.completeLink(keys.link(id), ok ? 'connected' : 'failed',
        ok ? outcome.merchantId : '', ok ? '' : outcome.reason, String(now()))) === 1
    }
  }
}
