// Merchant records for store-level tests: JWT-shaped random tokens, connected, a year of refresh.
import { randomBytes } from 'node:crypto'
import { RECORD_GRACE_MS, type NewRecord } from '../../src/token-store.js'
import type { KeyRing } from '../../src/key-ring.js'
import type { RedisClient } from '../../src/redis-client.js'
import type { RedisKeys } from '../../src/redis-keys.js'

export const HOUR = 3600_000

export const fakeToken = (kind: string): string => `${kind}.${randomBytes(24).toString('base64url')}.${randomBytes(64).toString('base64url')}`

export function newRecord (merchantId: string, overrides: Partial<NewRecord> = {}): NewRecord {
  const now = Date.now()
  return {
    merchantId,
    status: 'connected',
    scope: 'payments transactions',
    clientStatus: 'active',
    connectedAt: now,
    accessTokenExpiresAt: now + 15 * 60_000,
    refreshTokenExpiresAt: now + 365 * 24 * HOUR,
    lastRefreshedAt: null,
    accessToken: fakeToken('at'),
    refreshToken: fakeToken('rt'),
    ...overrides
  }
}

/**
 * Writes a record in the layout of the releases before the binary one, as their store did: one
 * hash with the metadata and both tokens as text envelopes of the key ring, expiring with the
 * refresh token plus the grace period. No tokens key, no counter.
 */
export async function putLegacyRecord (redis: RedisClient, keyRing: KeyRing, keys: RedisKeys, r: NewRecord, at: { version: number, grant: string } = { version: 1, grant: 'legacy-grant-id0' }): Promise<void> {
  const m = r.merchantId
  await redis.hset(keys.merchant(m),
    'version', at.version, 'grant', at.grant,
    'status', r.status,
    'scope', r.scope,
    'client_status', r.clientStatus,
    'connected_at', r.connectedAt,
    'access_token_expires_at', r.accessTokenExpiresAt,
    'refresh_token_expires_at', r.refreshTokenExpiresAt,
    'last_refreshed_at', r.lastRefreshedAt ?? '',
    'access_token_enc', keyRing.encrypt(r.accessToken, m, 'access_token'),
    'refresh_token_enc', keyRing.encrypt(r.refreshToken, m, 'refresh_token'))
  await redis.pexpireat(keys.merchant(m), r.refreshTokenExpiresAt + RECORD_GRACE_MS)
}
