// The simulator's authorization server: authorization codes, JWT-shaped tokens, and the two
// grants of POST /oauth2/v3/token. Refresh tokens are remembered by digest (see state-file.ts).
import { randomBytes, randomUUID, timingSafeEqual } from 'node:crypto'
import { ID_PATTERN } from '../config.js'
import { tokenDigest, type RefreshGrant } from './state-file.js'

export type Fields = Record<string, unknown>

export class OAuthError extends Error {
  constructor (readonly code: string, readonly description: string) { super(description) }
}

export const random = (bytes: number): string => randomBytes(bytes).toString('base64url')
const b64json = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')

function sameSecret (a: string, b: string): boolean {
  const x = Buffer.from(a)
  const y = Buffer.from(b)
  return x.length === y.length && timingSafeEqual(x, y)
}

/** A single string field; a repeated field counts as absent. */
export function field (fields: Fields, name: string): string | undefined {
  const v = fields[name]
  return typeof v === 'string' ? v : undefined
}

export interface GrantsOptions {
  clientId: string
  clientSecret: string
  scopes: string[]
  codeTtlMs: number
  /** Seconds. */
  accessTtl: number
  /** Seconds. */
  refreshTtl: number
  rotateRefreshTokens: boolean
  tokenPadBytes?: number
  now: () => number
  /** The refresh tokens issued so far, by tokenDigest (a state file's map); empty when absent. */
  refreshTokens?: Map<string, RefreshGrant>
  /** Called after every change to refreshTokens. */
  changed?: () => void
}

interface CodeEntry { clientId: string, merchantId: string, expiresAt: number }

export function createGrants (opts: GrantsOptions) {
  const { now, scopes, accessTtl, refreshTtl } = opts
  const codes = new Map<string, CodeEntry>()
  const refreshTokens = opts.refreshTokens ?? new Map<string, RefreshGrant>()
  const changed = opts.changed ?? (() => {})

  function issueCode (clientId: string, merchantId: string): string {
    if (!ID_PATTERN.test(merchantId)) throw new Error('merchant id must be 1-64 of [A-Za-z0-9_-]')
    const t = now()
    for (const [c, e] of codes) if (e.expiresAt <= t) codes.delete(c)
    const code = random(24)
    codes.set(code, { clientId, merchantId, expiresAt: t + opts.codeTtlMs })
    return code
  }

  function jwt (kind: 'access_token' | 'refresh_token', merchantId: string | undefined, lifetime: number): string {
    const payload: Record<string, unknown> = {
      jti: randomUUID(),
      iat: now(),
      client_id: opts.clientId,
      ...(merchantId === undefined ? {} : { merchant_id: merchantId }),
      scopes,
      expires_in: lifetime,
      token_type: kind
    }
    if (opts.tokenPadBytes !== undefined && opts.tokenPadBytes > 0) payload.pad = 'x'.repeat(opts.tokenPadBytes)
    return `${b64json({ kid: 'simulator', alg: 'RS256' })}.${b64json(payload)}.${random(256)}`
  }

  function tokenResponse (merchantId: string, refreshToken: string, withMerchantClaim: boolean): Record<string, unknown> {
    return {
      access_token: jwt('access_token', withMerchantClaim ? merchantId : undefined, accessTtl),
      token_type: 'Bearer',
      refresh_token: refreshToken,
      expires_in: accessTtl,
      scope: scopes.join(' '),
      refresh_token_expires_in: refreshTtl,
      client_status: 'active'
    }
  }

  function newRefreshToken (merchantId: string, withMerchantClaim: boolean): string {
    const token = jwt('refresh_token', withMerchantClaim ? merchantId : undefined, refreshTtl)
    refreshTokens.set(tokenDigest(token), { clientId: opts.clientId, merchantId, expiresAt: now() + refreshTtl * 1000 })
    changed()
    return token
  }

  /** The token endpoint's logic for a form; throws OAuthError. */
  function grant (fields: Fields, withMerchantClaim: boolean): { body: Record<string, unknown>, grantType: 'authorization_code' | 'refresh_token' } {
    const clientId = field(fields, 'client_id')
    const clientSecret = field(fields, 'client_secret')
    const grantType = field(fields, 'grant_type')
    if (clientId === undefined || clientSecret === undefined || grantType === undefined) {
      throw new OAuthError('invalid_request', 'client_id, client_secret and grant_type are required once each')
    }
    if (clientId !== opts.clientId || !sameSecret(clientSecret, opts.clientSecret)) {
      throw new OAuthError('invalid_client', 'client authentication failed')
    }
    if (grantType === 'authorization_code') {
      const code = field(fields, 'code')
      if (code === undefined || code === '') throw new OAuthError('invalid_request', 'code is required')
      const entry = codes.get(code)
      codes.delete(code) // single use, whatever happens next
      if (entry === undefined || entry.expiresAt <= now() || entry.clientId !== clientId) {
        throw new OAuthError('invalid_grant', 'authorization code is invalid, expired or already used')
      }
      return { grantType, body: tokenResponse(entry.merchantId, newRefreshToken(entry.merchantId, withMerchantClaim), withMerchantClaim) }
    }
    if (grantType === 'refresh_token') {
      const token = field(fields, 'refresh_token')
      if (token === undefined || token === '') throw new OAuthError('invalid_request', 'refresh_token is required')
      const digest = tokenDigest(token)
      const entry = refreshTokens.get(digest)
      if (entry === undefined || entry.expiresAt <= now() || entry.clientId !== clientId) {
        throw new OAuthError('invalid_grant', 'refresh token is invalid or expired')
      }
      let refreshToken = token
      if (opts.rotateRefreshTokens) {
        refreshTokens.delete(digest)
        refreshToken = newRefreshToken(entry.merchantId, withMerchantClaim)
      } else {
        // CyberSource: the refresh token's expiry resets on every successful token request.
        entry.expiresAt = now() + refreshTtl * 1000
        changed()
      }
      return { grantType, body: tokenResponse(entry.merchantId, refreshToken, withMerchantClaim) }
    }
    throw new OAuthError('unsupported_grant_type', 'grant_type must be authorization_code or refresh_token')
  }

  /** Invalidates every refresh token of the merchant; returns how many there were. */
  function revoke (merchantId: string): number {
    let n = 0
    for (const [digest, entry] of refreshTokens) {
      if (entry.merchantId === merchantId) {
        refreshTokens.delete(digest)
        n++
      }
    }
    if (n > 0) changed()
    return n
  }

  return { issueCode, jwt, tokenResponse, grant, revoke }
}
