// The AES-256-GCM key ring: round trips, random IVs, tamper detection, AAD binding, rotation.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { createKeyRing, KeyRingError, KeyUnavailableError, type KeyRing } from '../../src/key-ring.js'

type Tap = Parameters<Parameters<typeof t.test>[0]>[0]

const k1 = { kid: 'k1', key: randomBytes(32) }
const k2 = { kid: 'k2', key: randomBytes(32) }
const TOKEN = `eyJhbGciOiJSUzI1NiJ9.${Buffer.from(JSON.stringify({ merchant_id: 'm_1', pad: 'x'.repeat(1500) })).toString('base64url')}.${randomBytes(256).toString('base64url')}`

/** Flips one bit of the n-th dot-separated part of a blob (decoded bytes, so no base64 slack). */
function flip (blob: string, part: number, byte = 0): string {
  const parts = blob.split('.')
  const bytes = Buffer.from(parts[part], 'base64url')
  bytes[byte] ^= 0x01
  parts[part] = bytes.toString('base64url')
  return parts.join('.')
}

function throwsKeyRingError (t: Tap, fn: () => unknown, what: string): void {
  let caught: unknown
  try {
    fn()
  } catch (err) {
    caught = err
  }
  t.ok(caught instanceof KeyRingError, `${what}: KeyRingError`)
  t.match((caught as Error | undefined)?.name, /^Key(Ring|Unavailable)Error$/, `${what}: a key ring error`)
  t.notMatch(String((caught as Error | undefined)?.message), TOKEN.slice(0, 20), `${what}: the message holds no plaintext`)
}

t.test('an empty ring is refused', async t => {
  t.throws(() => createKeyRing([]), KeyRingError)
})

t.test('round trip', async t => {
  const ring = createKeyRing([k1])
  for (const plaintext of [TOKEN, 'short', '', 'üñíçødé ✓ 🔑', 'a.b.c']) {
    const blob = ring.encrypt(plaintext, 'm_1', 'access_token')
    t.equal(ring.decrypt(blob, 'm_1', 'access_token'), plaintext, `round trip of ${JSON.stringify(plaintext.slice(0, 12))}`)
    if (plaintext.length >= 5) t.notOk(blob.includes(plaintext), 'the blob does not contain the plaintext')
  }
  const blob = ring.encrypt(TOKEN, 'm_1', 'access_token')
  t.notOk(blob.includes(TOKEN.split('.')[1]), 'nor the JWT payload segment')
  t.equal(blob.split('.')[1], 'k1', 'the blob names its key id')
  t.equal(ring.isStale(blob), false)
})

t.test('every encryption uses a fresh IV', async t => {
  const ring = createKeyRing([k1])
  const blobs = Array.from({ length: 50 }, () => ring.encrypt(TOKEN, 'm_1', 'access_token'))
  t.equal(new Set(blobs).size, 50, 'ciphertexts of one plaintext differ')
  t.equal(new Set(blobs.map(b => b.split('.')[2])).size, 50, 'IVs differ')
  t.equal(Buffer.from(blobs[0].split('.')[2], 'base64url').length, 12, '96-bit IV')
  t.equal(Buffer.from(blobs[0].split('.')[4], 'base64url').length, 16, '128-bit tag')
  for (const b of blobs) t.equal(ring.decrypt(b, 'm_1', 'access_token'), TOKEN)
})

t.test('tampering is detected', async t => {
  const ring = createKeyRing([k1, k2])
  const blob = ring.encrypt(TOKEN, 'm_1', 'refresh_token')
  const [version, kid, iv, ct, tag] = blob.split('.')
  t.equal(ring.decrypt(blob, 'm_1', 'refresh_token'), TOKEN, 'the untouched blob decrypts')
  const cases: Array<[string, string]> = [
    ['ciphertext, first byte', flip(blob, 3, 0)],
    ['ciphertext, last byte', flip(blob, 3, Buffer.from(ct, 'base64url').length - 1)],
    ['tag', flip(blob, 4, 0)],
    ['tag, last byte', flip(blob, 4, 15)],
    ['IV', flip(blob, 2, 0)],
    ['IV, last byte', flip(blob, 2, 11)],
    ['kid changed to another configured key', [version, 'k2', iv, ct, tag].join('.')],
    ['unknown kid', [version, 'k9', iv, ct, tag].join('.')],
    ['empty kid', [version, '', iv, ct, tag].join('.')],
    ['unknown version', ['v2', kid, iv, ct, tag].join('.')],
    ['tag missing', [version, kid, iv, ct].join('.')],
    ['tag truncated', [version, kid, iv, ct, tag.slice(0, 8)].join('.')],
    ['empty tag', [version, kid, iv, ct, ''].join('.')],
    ['ciphertext truncated', [version, kid, iv, ct.slice(0, -4), tag].join('.')],
    ['ciphertext extended', [version, kid, iv, `${ct}AAAA`, tag].join('.')],
    ['empty IV', [version, kid, '', ct, tag].join('.')],
    ['parts swapped', [version, kid, iv, tag, ct].join('.')],
    ['empty string', ''],
    ['garbage', 'not a blob at all'],
    ['plaintext token', TOKEN]
  ]
  // A prefix of the right tag: GCM without a fixed tag length would accept it.
  for (const n of [4, 8, 12, 13, 15]) {
    const short = Buffer.from(tag, 'base64url').subarray(0, n).toString('base64url')
    cases.push([`tag truncated to ${n} bytes`, [version, kid, iv, ct, short].join('.')])
  }
  for (const [what, bad] of cases) throwsKeyRingError(t, () => ring.decrypt(bad, 'm_1', 'refresh_token'), what)
})

t.test('the merchant id and the field are bound as additional authenticated data', async t => {
  const ring = createKeyRing([k1])
  const blob = ring.encrypt(TOKEN, 'm_1', 'access_token')
  throwsKeyRingError(t, () => ring.decrypt(blob, 'm_2', 'access_token'), 'another merchant')
  throwsKeyRingError(t, () => ring.decrypt(blob, 'm_1 ', 'access_token'), 'merchant id with a trailing space')
  throwsKeyRingError(t, () => ring.decrypt(blob, 'M_1', 'access_token'), 'merchant id in another case')
  throwsKeyRingError(t, () => ring.decrypt(blob, '', 'access_token'), 'empty merchant id')
  throwsKeyRingError(t, () => ring.decrypt(blob, 'm_1', 'refresh_token'), 'another field')
  t.equal(ring.decrypt(blob, 'm_1', 'access_token'), TOKEN, 'the right merchant and field decrypt')
})

t.test('key ids: unknown kids fail, rotation reads old and writes new', async t => {
  const old = createKeyRing([k1])
  const blob = old.encrypt(TOKEN, 'm_1', 'access_token')

  throwsKeyRingError(t, () => createKeyRing([k2]).decrypt(blob, 'm_1', 'access_token'), 'ring without the kid')
  throwsKeyRingError(t, () => createKeyRing([{ kid: 'k1', key: randomBytes(32) }]).decrypt(blob, 'm_1', 'access_token'), 'same kid, another key')

  const rotated: KeyRing = createKeyRing([k2, k1])
  t.equal(rotated.decrypt(blob, 'm_1', 'access_token'), TOKEN, 'the rotated ring reads the old blob')
  t.equal(rotated.isStale(blob), true, 'the old blob is stale for the rotated ring')
  const fresh = rotated.encrypt(TOKEN, 'm_1', 'access_token')
  t.equal(fresh.split('.')[1], 'k2', 'new blobs use the first key')
  t.equal(rotated.isStale(fresh), false)
  throwsKeyRingError(t, () => old.decrypt(fresh, 'm_1', 'access_token'), 'the old ring cannot read the new blob')
})

t.test('an unknown key id is told apart from a failed authentication', async t => {
  const blob = createKeyRing([k1]).encrypt(TOKEN, 'm_1', 'access_token')
  t.throws(() => createKeyRing([k2]).decrypt(blob, 'm_1', 'access_token'), KeyUnavailableError, 'kid not configured: KeyUnavailableError')
  let caught: unknown
  try {
    createKeyRing([{ kid: 'k1', key: randomBytes(32) }]).decrypt(blob, 'm_1', 'access_token')
  } catch (err) {
    caught = err
  }
  t.ok(caught instanceof KeyRingError && !(caught instanceof KeyUnavailableError), 'same kid, other key: a plain KeyRingError')
})

t.test('seal and open: only values sealed for the purpose under a configured key open', async t => {
  const ring = createKeyRing([k1])
  const sealed = ring.seal('list-cursor', '0:123:4')
  t.match(sealed, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{22}$/, 'URL-safe')
  t.equal(ring.open('list-cursor', sealed), '0:123:4')
  t.equal(ring.open('event-id', sealed), undefined, 'another purpose')
  t.equal(createKeyRing([k2]).open('list-cursor', sealed), undefined, 'another key')
  t.equal(createKeyRing([k2, k1]).open('list-cursor', sealed), '0:123:4', 'a ring that still holds the key (rotation)')
  const [body, mac] = sealed.split('.')
  const other = Buffer.from('0:999:4').toString('base64url')
  const flipped = mac.slice(0, -1) + (mac.endsWith('A') ? 'B' : 'A')
  for (const forged of [`${other}.${mac}`, `${body}.${flipped}`, `${body}.${mac}=`, `${body}.${mac} `, body, `${body}.`, '', '.', `${body}.${mac}.x`, 'x'.repeat(600)]) {
    t.equal(ring.open('list-cursor', forged), undefined, `forged: ${forged.slice(0, 24)}`)
  }
})
