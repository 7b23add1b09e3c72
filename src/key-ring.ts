// AES-256-GCM envelope for tokens at rest: a random 96-bit IV per write, the key id stored beside
// the ciphertext, and the merchant id + field bound as additional authenticated data, so a
// ciphertext copied to another merchant or field fails to decrypt.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'
import type { EncryptionKey } from './config.js'

export interface KeyRing {
  /** Encrypts with the first (current) key. */
  encrypt: (plaintext: string, merchantId: string, field: string) => string
  /** Decrypts with whichever configured key the blob names; throws KeyRingError otherwise. */
  decrypt: (blob: string, merchantId: string, field: string) => string
  /** Whether the blob was written with a key other than the current one (re-encrypt on next write). */
  isStale: (blob: string) => boolean
}

export class KeyRingError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'KeyRingError'
  }
}

const VERSION = 'v1'
const TAG_BYTES = 16
const aad = (merchantId: string, field: string): Buffer => Buffer.from(`${VERSION}\n${merchantId}\n${field}`, 'utf8')

export function createKeyRing (keys: EncryptionKey[]): KeyRing {
  if (keys.length === 0) throw new KeyRingError('at least one encryption key is required')
  const current = keys[0]
  const byKid = new Map(keys.map(k => [k.kid, k.key]))
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
      const key = byKid.get(kid)
      if (version !== VERSION || key === undefined || tag === undefined) throw new KeyRingError(`cannot decrypt ${field}: unknown format or key id`)
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
    isStale: (blob) => blob.split('.', 2)[1] !== current.kid
  }
}
