// The binary tokens layout (src/record-codec.ts): round trip, bytes rather than base64, bound to
// the merchant, tamper-evident, key ids (known, unknown, stale), and the metadata fields.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { createKeyRing, KeyRingError, KeyUnavailableError } from '../../src/key-ring.js'
import { META_FIELDS, decodeTokens, encodeTokens, isStaleKid, kidOf, metaFields, toMeta } from '../../src/record-codec.js'
import { fakeToken, newRecord } from '../helpers/records.js'

const OLD = { kid: 'old', key: randomBytes(32) }
const NEW = { kid: 'k-2026_1', key: randomBytes(32) }
const ring = createKeyRing([NEW, OLD])

t.test('round trip, as bytes', async t => {
  for (const tokens of [
    { accessToken: fakeToken('at'), refreshToken: fakeToken('rt') },
    { accessToken: '12:ab:cd', refreshToken: ':' },
    { accessToken: '', refreshToken: 'é€😀 only' },
    { accessToken: 'x'.repeat(70_000), refreshToken: 'y' }
  ]) {
    const blob = encodeTokens(ring, 'm_1', tokens)
    t.same(decodeTokens(ring, 'm_1', blob), tokens, `${tokens.accessToken.length} + ${tokens.refreshToken.length} characters`)
    const raw = Buffer.byteLength(tokens.accessToken) + Buffer.byteLength(tokens.refreshToken)
    // layout byte, kid length, kid, IV, tag, and the access token's length in digits and a colon
    t.equal(blob.length, 2 + NEW.kid.length + 12 + 16 + String(tokens.accessToken.length).length + 1 + raw, 'no base64: ciphertext as long as the tokens')
    t.equal(kidOf(blob), NEW.kid)
    t.equal(kidOf(blob.subarray(0, 2 + NEW.kid.length)), NEW.kid, 'the key id from the first bytes alone')
  }
  const a = encodeTokens(ring, 'm_1', { accessToken: 'same', refreshToken: 'same' })
  const b = encodeTokens(ring, 'm_1', { accessToken: 'same', refreshToken: 'same' })
  t.not(a.toString('hex'), b.toString('hex'), 'a fresh IV per write')
})

t.test('bound to its merchant; any changed byte fails', async t => {
  const tokens = { accessToken: fakeToken('at'), refreshToken: fakeToken('rt') }
  const blob = encodeTokens(ring, 'm_1', tokens)
  t.throws(() => decodeTokens(ring, 'm_2', blob), KeyRingError, 'another merchant id: refused')
  let accepted = 0
  for (let i = 2 + NEW.kid.length; i < blob.length; i += 7) {
    const bad = Buffer.from(blob)
    bad[i] ^= 0x01
    try {
      decodeTokens(ring, 'm_1', bad)
      accepted++
    } catch (err) {
      if (!(err instanceof KeyRingError)) throw err
    }
  }
  t.equal(accepted, 0, 'no altered IV, tag or ciphertext byte decrypts')
  t.throws(() => decodeTokens(ring, 'm_1', blob.subarray(0, 20)), KeyRingError, 'truncated')
  t.throws(() => decodeTokens(ring, 'm_1', Buffer.concat([Buffer.from([2]), blob.subarray(1)])), KeyRingError, 'another layout version')
  t.throws(() => decodeTokens(ring, 'm_1', Buffer.from('v1.k1.abc.def.ghi')), KeyRingError, 'a text envelope is not this layout')
})

t.test('key ids: unknown throws KeyUnavailableError, old ones are stale and still read', async t => {
  const tokens = { accessToken: 'a', refreshToken: 'r' }
  const underOld = encodeTokens(createKeyRing([OLD]), 'm_1', tokens)
  t.equal(kidOf(underOld), 'old')
  t.ok(isStaleKid(ring, 'old'), 'old is not the first key')
  t.notOk(isStaleKid(ring, NEW.kid))
  t.same(decodeTokens(ring, 'm_1', underOld), tokens, 'readable while the old key is configured')
  t.throws(() => decodeTokens(createKeyRing([NEW]), 'm_1', underOld), KeyUnavailableError, 'unknown key id')
  const swapped = Buffer.from(underOld)
  swapped.write('new', 2) // another configured kid of the same length
  t.throws(() => decodeTokens(createKeyRing([{ kid: 'new', key: randomBytes(32) }, OLD]), 'm_1', swapped), KeyRingError, 'a rewritten key id does not decrypt')
})

t.test('metadata fields round trip through HSET pairs and HMGET values', async t => {
  const r = newRecord('m_1', { lastRefreshedAt: 123, status: 'reauthorization_required' })
  const pairs = metaFields(r)
  const stored = new Map<string, string>([['version', '7'], ['grant', 'g'], ...Array.from({ length: pairs.length / 2 }, (_, i) => [String(pairs[2 * i]), String(pairs[2 * i + 1])] as [string, string])])
  t.same([...stored.keys()].sort(), [...META_FIELDS].sort(), 'exactly the metadata fields')
  const { accessToken: _a, refreshToken: _r, ...meta } = r
  t.same(toMeta('m_1', META_FIELDS.map(f => stored.get(f) ?? null)), { ...meta, version: 7, grant: 'g' })
  t.equal(toMeta('m_1', META_FIELDS.map(() => null)), undefined, 'no version: no record')
  t.equal(toMeta('m_1', META_FIELDS.map(f => f === 'version' ? '1' : f === 'last_refreshed_at' ? '' : null))?.lastRefreshedAt, null)
  t.ok(pairs.every(v => String(v).length <= 64) || r.scope.length > 64, 'every value fits a listpack entry')
})
