// Merchant records for store-level tests: JWT-shaped random tokens, connected, a year of refresh.
import { randomBytes } from 'node:crypto'
import type { NewRecord } from '../../src/token-store.js'

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
