// AES-256-GCM envelope for tokens at rest: a random 96-bit IV per write, the key id stored beside
// the ciphertext, and the merchant id + field bound as additional authenticated data, so a
// ciphertext copied to another merchant or field fails to decrypt. The same keys also seal the
// opaque values the service hands out and takes back (list cursors): an HMAC under a key derived
// per purpose, so a value the service did not issue is refused before it is parsed.
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto'
import type { EncryptionKey } from './config.js'

export interface KeyRing {
  /** Encrypts with the first (current) key. */
  encrypt: (plaintext: string, merchantId: string, field: string) => string
  /** Decrypts with whichever configured key the blob names; throws KeyRingError otherwise. */
  decrypt: (blob: string, merchantId: string, field: string) => string
  /** Whether the blob was written with a key other than the current one (re-encrypt on next write). */
  isStale: (blob: string) => boolean
  /** `payload` with an integrity check, as an opaque URL-safe string. */
  seal: (purpose: string, payload: string) => string
  /** The payload of a value `seal` made for this purpose under any configured key; else undefined. */
  open: (purpose: string, sealed: string) => string | undefined
}

export class KeyRingError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'KeyRingError'
  }
}

/** The blob names a key id that is not configured (removed too early, or not shipped yet). */
export class KeyUnavailableError extends KeyRingError {
  constructor (readonly kid: string) {
    super('cannot decrypt: the key id is not configured')
    this.name = 'KeyUnavailableError'
  }
}

const VERSION = 'v1'
const TAG_BYTES = 16
const SEAL_BYTES = 16
const SEALED = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{22}$/
const aad = (merchantId: string, field: string): Buffer => Buffer.from(`${VERSION}\n${merchantId}\n${field}`, 'utf8')

export function createKeyRing (keys: EncryptionKey[]): KeyRing {
  if (keys.length === 0) throw new KeyRingError('at least one encryption key is required')
  const current = keys[0]
  const byKid = new Map(keys.map(k => [k.kid, k.key]))
  const sealKeys = new Map<string, Buffer[]>()
  const sealKeysFor = (purpose: string): Buffer[] => {
    let derived = sealKeys.get(purpose)
    if (derived === undefined) {
      derived = keys.map(k => Buffer.from(hkdfSync('sha256', k.key, Buffer.alloc(0), `cybs-oauth-broker seal ${purpose}`, 32)))
      sealKeys.set(purpose, derived)
    }
    return derived
  }
  const mac = (key: Buffer, body: string): Buffer => createHmac('sha256', key).update(body).digest().subarray(0, SEAL_BYTES)
  return {
    encrypt (plaintext, merchantId, field) {
      const iv = randomBytes(12)
      const cipher = createCipheriv('aes-256-gcm', current.key, iv)
      cipher.setAAD(aad(merchantId, field))
      const ct = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()])
      return [VERSION, current.kid, iv.toString('base64url'), ct.toString('base64url'), cipher.getAuthTag().toString('base64url')].join('.')
    },
    decrypt (blob, merchantId, field) {
      const [version, kid, iv, ct, tag] = blob.split('.')
      if (version !== VERSION || tag === undefined) throw new KeyRingError(`cannot decrypt ${field}: unknown format`)
      const key = byKid.get(kid)
      if (key === undefined) throw new KeyUnavailableError(kid)
      try {
        // A fixed tag length: without it GCM accepts a truncated tag (down to 4 bytes).
        const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(iv, 'base64url'), { authTagLength: TAG_BYTES })
        decipher.setAAD(aad(merchantId, field))
        decipher.setAuthTag(Buffer.from(tag, 'base64url'))
        return Buffer.concat([decipher.update(Buffer.from(ct, 'base64url')), decipher.final()]).toString('utf8')
      } catch {
        throw new KeyRingError(`cannot decrypt ${field}: authentication failed`)
      }
    },
    isStale: (blob) => blob.split('.', 2)[1] !== current.kid,
    seal (purpose, payload) {
      const body = Buffer.from(payload, 'utf8').toString('base64url')
      return `${body}.${mac(sealKeysFor(purpose)[0], body).toString('base64url')}`
    },
    open (purpose, sealed) {
      // Exactly the form seal makes: base64url decoding skips what it cannot read, so a loose
      // form would let other strings (a trailing '=', a space) stand for an issued value.
      if (sealed.length > 512 || !SEALED.test(sealed)) return undefined
      const dot = sealed.indexOf('.')
      const body = sealed.slice(0, dot)
      // Compared as text: the last character's spare bits are ignored by base64url decoding.
      const given = Buffer.from(sealed.slice(dot + 1))
      // Any configured key: values sealed before a rotation stay valid while their key is kept.
      const valid = sealKeysFor(purpose).some(k => timingSafeEqual(Buffer.from(mac(k, body).toString('base64url')), given))
      return valid ? Buffer.from(body, 'base64url').toString('utf8') : undefined
    }
  }
}
