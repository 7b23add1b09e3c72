// Bearer secrets of INTERNAL_API_KEYS, checked in constant time: the presented value and every
// configured secret are hashed to equal length and all are compared, with no early exit.
import { createHash, timingSafeEqual } from 'node:crypto'
import type { InternalApiKey } from './config.js'

const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest()

/** Returns a function that maps an Authorization header to the caller's name, or undefined. */
export function createApiKeyVerifier (keys: InternalApiKey[]): (authorization: string | undefined) => string | undefined {
  const known = keys.map(k => ({ caller: k.caller, digest: digest(k.secret) }))
  return (authorization) => {
    if (authorization === undefined || authorization.length > 1024) return undefined
    const m = /^Bearer ([\x21-\x7e]+)$/i.exec(authorization)
    if (m === null) return undefined
    const presented = digest(m[1])
    let caller: string | undefined
    for (const k of known) {
      if (timingSafeEqual(presented, k.digest) && caller === undefined) caller = k.caller
    }
    return caller
  }
}
