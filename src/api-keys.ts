// Bearer secrets of INTERNAL_API_KEYS, checked in constant time: the presented secret is copied
// into a zero-filled buffer one byte longer than the longest configured secret, and compared with
// every configured secret (zero-padded to the same size) by timingSafeEqual, with no early exit.
// Neither the content nor the length of a configured secret changes how long a check takes.
// (Hashing both sides to equal length would do the same at several times the cost, on every
// internal call.)
import { timingSafeEqual } from 'node:crypto'
import type { InternalApiKey } from './config.js'

const MAX_AUTHORIZATION_LENGTH = 1024
const BEARER = /^Bearer [\x21-\x7e]+$/i
const SECRET_OFFSET = 'Bearer '.length

/** Returns a function that maps an Authorization header to the caller's name, or undefined. */
export function createApiKeyVerifier (keys: InternalApiKey[]): (authorization: string | undefined) => string | undefined {
  const size = Math.max(0, ...keys.map(k => Buffer.byteLength(k.secret))) + 1
  const padded = (s: string): { bytes: Buffer, length: number } => {
    const bytes = Buffer.alloc(size)
    return { bytes, length: bytes.write(s, 'utf8') }
  }
  const known = keys.map(k => ({ caller: k.caller, ...padded(k.secret) }))
  // One scratch buffer, zero between checks (each runs synchronously, start to end).
  const scratch = Buffer.alloc(size)

  return (authorization) => {
    if (authorization === undefined || authorization.length > MAX_AUTHORIZATION_LENGTH) return undefined
    if (!BEARER.test(authorization)) return undefined
    // A longer secret is cut at `size` bytes, one more than any configured secret has, so it
    // matches none. (Printable ASCII: its latin1 bytes are its UTF-8 bytes.)
    const length = scratch.write(authorization.slice(SECRET_OFFSET), 'latin1')
    let caller: string | undefined
    for (const k of known) {
      const same = timingSafeEqual(scratch, k.bytes)
      if (same && length === k.length && caller === undefined) caller = k.caller
    }
    scratch.fill(0) // the presented secret does not stay in memory
    return caller
  }
}
