// Event ids: `evt_<stream id>_<MAC>`. The stream id places the event in the log (an `after`
// cursor is an event id); the MAC, under a key derived from one of TOKEN_ENCRYPTION_KEYS, makes
// an id the service did not issue detectable before it is used. The key id an event was first
// named under is stored with it, so its id stays the same after a key rotation (it is also the
// webhook-id receivers deduplicate on) for as long as that key is configured.
import { createHmac, hkdfSync, timingSafeEqual } from 'node:crypto'
import type { EncryptionKey } from './config.js'

export interface EventIds {
  /** The key id new events are named under. */
  currentKid: string
  /** The id of the stream entry, under the key `kid` (the current one when it is gone). */
  issue: (streamId: string, kid: string) => string
  /** The stream id of an id this service issued under any configured key; else undefined. */
  open: (id: string) => string | undefined
}

const ID = /^evt_(\d{1,15}-\d{1,19})_([A-Za-z0-9_-]{22})$/

export function createEventIds (keys: EncryptionKey[]): EventIds {
  if (keys.length === 0) throw new Error('at least one encryption key is required')
  const macKeys = new Map(keys.map(k => [k.kid, Buffer.from(hkdfSync('sha256', k.key, Buffer.alloc(0), 'cybs-oauth-broker event id', 32))]))
  const current = keys[0].kid
  const mac = (key: Buffer, streamId: string): string => createHmac('sha256', key).update(streamId).digest().subarray(0, 16).toString('base64url')
  return {
    currentKid: current,
    issue (streamId, kid) {
      const key = macKeys.get(kid) ?? macKeys.get(current) as Buffer
      return `evt_${streamId}_${mac(key, streamId)}`
    },
    open (id) {
      const m = ID.exec(id)
      if (m === null) return undefined
      const given = Buffer.from(m[2])
      // Every key is tried (no early exit): the time taken says nothing about which one matched.
      let valid = false
      for (const key of macKeys.values()) valid = timingSafeEqual(Buffer.from(mac(key, m[1])), given) || valid
      return valid ? m[1] : undefined
    }
  }
}
