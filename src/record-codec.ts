// How a merchant record is laid out in Redis. The metadata is a small hash (`keys.merchant`) whose
// values all fit Redis's compact listpack encoding, readable without the tokens; the tokens are
// one binary string beside it (`keys.merchantTokens`, same hash tag), in one envelope of the key
// ring (AES-256-GCM, merchant id bound as AAD) stored as bytes rather than base64:
//
//   u8 layout (1) | u8 kid length | kid | iv (12) | tag (16) | ciphertext
//
// The plaintext is `<access token length>:<access token><refresh token>`. Records written before
// this layout keep both tokens in the hash (`access_token_enc`, `refresh_token_enc`, text
// envelopes): they are still read, and rewritten in this layout by their next write.
import type { KeyRing } from './key-ring.js'
import { KeyRingError } from './key-ring.js'
import type { MerchantMeta } from './token-store.js'

const LAYOUT = 1
const ENVELOPE = 'v1'
const IV_BYTES = 12
const TAG_BYTES = 16
/** The key ring's additional authenticated data names what is sealed: both tokens, together. */
const FIELD = 'tokens'

/** The metadata fields, in the order HMGET asks for them (toMeta reads them so). */
export const META_FIELDS = [
  'version', 'grant', 'status', 'scope', 'client_status', 'connected_at',
  'access_token_expires_at', 'refresh_token_expires_at', 'last_refreshed_at'
] as const
/** The token fields of records written before the binary layout. */
export const LEGACY_FIELDS = ['access_token_enc', 'refresh_token_enc'] as const

export interface Tokens { accessToken: string, refreshToken: string }

const num = (v: string | null | undefined): number => v === null || v === undefined || v === '' ? 0 : Number(v)

/** The metadata from HMGET of META_FIELDS; undefined when the record does not exist. */
export function toMeta (merchantId: string, v: Array<string | null>): MerchantMeta | undefined {
  const [version, grant, status, scope, clientStatus, connectedAt, accessExp, refreshExp, lastRefreshed] = v
  if (version === null || version === undefined) return undefined
  return {
    merchantId,
    status: status === 'reauthorization_required' ? 'reauthorization_required' : 'connected',
    scope: scope ?? '',
    clientStatus: clientStatus ?? '',
    connectedAt: num(connectedAt),
    accessTokenExpiresAt: num(accessExp),
    refreshTokenExpiresAt: num(refreshExp),
    lastRefreshedAt: lastRefreshed === null || lastRefreshed === undefined || lastRefreshed === '' ? null : num(lastRefreshed),
    version: num(version),
    grant: grant ?? ''
  }
}

/** The metadata as field/value pairs for HSET (version and grant are the write script's). */
export function metaFields (m: Omit<MerchantMeta, 'version' | 'grant' | 'merchantId'>): Array<string | number> {
  return [
    'status', m.status,
    'scope', m.scope,
    'client_status', m.clientStatus,
    'connected_at', m.connectedAt,
    'access_token_expires_at', m.accessTokenExpiresAt,
    'refresh_token_expires_at', m.refreshTokenExpiresAt,
    'last_refreshed_at', m.lastRefreshedAt ?? ''
  ]
}

/** Seals both tokens under the key ring's first key, as the bytes of the tokens key. */
export function encodeTokens (keyRing: KeyRing, merchantId: string, t: Tokens): Buffer {
  const envelope = keyRing.encrypt(`${t.accessToken.length}:${t.accessToken}${t.refreshToken}`, merchantId, FIELD)
  const parts = envelope.split('.')
  const [iv, ct, tag] = parts.slice(-3)
  const kid = parts.slice(1, -3).join('.')
  if (parts[0] !== ENVELOPE || parts.length < 5) throw new KeyRingError('unexpected envelope from the key ring')
  const kidBytes = Buffer.from(kid, 'utf8')
  return Buffer.concat([
    Buffer.from([LAYOUT, kidBytes.length]), kidBytes,
    Buffer.from(iv, 'base64url'), Buffer.from(tag, 'base64url'), Buffer.from(ct, 'base64url')
  ])
}

function parse (blob: Buffer): { kid: string, iv: Buffer, tag: Buffer, ct: Buffer } {
  const kidEnd = 2 + (blob[1] ?? 0)
  if (blob[0] !== LAYOUT || blob.length < kidEnd + IV_BYTES + TAG_BYTES) throw new KeyRingError('cannot decrypt tokens: unknown format')
  return {
    kid: blob.subarray(2, kidEnd).toString('utf8'),
    iv: blob.subarray(kidEnd, kidEnd + IV_BYTES),
    tag: blob.subarray(kidEnd + IV_BYTES, kidEnd + IV_BYTES + TAG_BYTES),
    ct: blob.subarray(kidEnd + IV_BYTES + TAG_BYTES)
  }
}

/** Opens the tokens key's bytes; throws KeyUnavailableError / KeyRingError like the key ring. */
export function decodeTokens (keyRing: KeyRing, merchantId: string, blob: Buffer): Tokens {
  const p = parse(blob)
  const envelope = [ENVELOPE, p.kid, p.iv.toString('base64url'), p.ct.toString('base64url'), p.tag.toString('base64url')].join('.')
  const plain = keyRing.decrypt(envelope, merchantId, FIELD)
  const colon = plain.indexOf(':')
  const n = Number(plain.slice(0, colon))
  if (colon < 1 || !Number.isSafeInteger(n) || colon + 1 + n > plain.length) throw new KeyRingError('cannot decrypt tokens: unknown format')
  return { accessToken: plain.slice(colon + 1, colon + 1 + n), refreshToken: plain.slice(colon + 1 + n) }
}

/** Opens the tokens of a record written before the binary layout (two text envelopes). */
export function decodeLegacyTokens (keyRing: KeyRing, merchantId: string, access: string, refresh: string): Tokens {
  return {
    accessToken: keyRing.decrypt(access, merchantId, 'access_token'),
    refreshToken: keyRing.decrypt(refresh, merchantId, 'refresh_token')
  }
}

/** The key id the tokens were sealed with (the first bytes are enough: GETRANGE 0 KID_PREFIX_BYTES). */
export const KID_PREFIX_BYTES = 2 + 255
export function kidOf (blob: Buffer): string {
  if (blob[0] !== LAYOUT || blob.length < 2 + blob[1]) throw new KeyRingError('cannot read tokens: unknown format')
  return blob.subarray(2, 2 + blob[1]).toString('utf8')
}

/** Whether sealed under a key other than the key ring's first one. */
export const isStaleKid = (keyRing: KeyRing, kid: string): boolean => keyRing.isStale(`${ENVELOPE}.${kid}`)
