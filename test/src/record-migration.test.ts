// Records written before the binary layout (one hash, tokens as base64 text envelopes; written
// here as that release's store wrote them, test/helpers/records.ts): the store reads them, and
// the next write (a refresh, a new onboarding, `npm run rotate-keys`) leaves the new layout with
// no old field; until then the status route, the list and deletes work on them.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import type { Redis } from 'ioredis'
import { serviceClient, startRedis, scanKeys } from '../helpers/redis.js'
import { createRedisKeys } from '../../src/redis-keys.js'
import { createKeyRing } from '../../src/key-ring.js'
import { createTokenStore, RECORD_GRACE_MS, type TokenStore } from '../../src/token-store.js'
import { createKeyRotation } from '../../src/key-rotation.js'
import { META_FIELDS, LEGACY_FIELDS, decodeTokens } from '../../src/record-codec.js'
import { EncryptionKeyUnavailableError } from '../../src/errors.js'
import { newRecord, putLegacyRecord } from '../helpers/records.js'

type Tap = Parameters<Parameters<typeof t.test>[0]>[0]

const keys = createRedisKeys('mig:')
const K1 = { kid: 'k1', key: randomBytes(32) }
const ring = createKeyRing([K1])
const GRANT = { version: 4, grant: 'legacy-grant-id0' }

async function setup (t: Tap): Promise<{ redis: Redis, store: TokenStore }> {
  const server = await startRedis(t)
  const redis = await serviceClient(t, server)
  return { redis, store: createTokenStore(redis, ring, keys) }
}

async function assertNewLayout (t: Tap, redis: Redis, merchantId: string, tokens: { accessToken: string, refreshToken: string }): Promise<void> {
  const hash = await redis.hgetall(keys.merchant(merchantId))
  t.same(Object.keys(hash).sort(), [...META_FIELDS].sort(), `${merchantId}: the hash holds the metadata fields only`)
  t.same(LEGACY_FIELDS.filter(f => f in hash), [], `${merchantId}: no old field left`)
  t.equal(await redis.call('OBJECT', 'ENCODING', keys.merchant(merchantId)), 'listpack', `${merchantId}: compact hash`)
  const blob = await redis.getBuffer(keys.merchantTokens(merchantId))
  t.ok(blob !== null, `${merchantId}: a tokens key`)
  if (blob !== null) t.same(decodeTokens(ring, merchantId, blob), { accessToken: tokens.accessToken, refreshToken: tokens.refreshToken }, `${merchantId}: holding the tokens`)
  const [a, b] = await Promise.all([redis.call('PEXPIRETIME', keys.merchant(merchantId)), redis.call('PEXPIRETIME', keys.merchantTokens(merchantId))])
  t.ok(Number(a) > Date.now() && a === b, `${merchantId}: both keys expire, at the same instant`)
}

t.test('an old record is read, listed, and rewritten in the new layout by a refresh', async t => {
  const { redis, store } = await setup(t)
  const old = newRecord('m_old', { lastRefreshedAt: Date.now() - 60_000 })
  await putLegacyRecord(redis, ring, keys, old, GRANT)
  t.same(await scanKeys(redis), [keys.merchant('m_old')], 'the old layout: one hash, no tokens key')

  t.same(await store.get('m_old'), { ...old, ...GRANT }, 'read with both tokens')
  const { accessToken: _a, refreshToken: _r, ...meta } = old
  t.same(await store.getMeta('m_old'), { ...meta, ...GRANT }, 'its metadata')
  t.equal(await store.version('m_old'), 4)
  t.same((await store.list(10)).items, [{ ...meta, ...GRANT }], 'listed')
  t.same(await store.getStatus('m_old'), { ...meta, ...GRANT }, 'its status')

  // The refresh the token service makes: compare-and-set on what it read.
  const refreshed = newRecord('m_old', { lastRefreshedAt: Date.now() })
  t.equal(await store.put(refreshed, GRANT), 5, 'the refresh writes version 5')
  await assertNewLayout(t, redis, 'm_old', refreshed)
  t.same(await store.get('m_old'), { ...refreshed, version: 5, grant: GRANT.grant }, 'read back, grant kept')
  t.same(await store.countByStatus(), { connected: 1, reauthorization_required: 0 }, 'and counted')
  const pexpire = Number(await redis.call('PEXPIRETIME', keys.merchant('m_old')))
  t.ok(Math.abs(pexpire - (refreshed.refreshTokenExpiresAt + RECORD_GRACE_MS)) < 1000, 'expiring with the new refresh token')
})

t.test('an old record: a stale refresh does not write; marking keeps it readable; a new onboarding or a delete', async t => {
  const { redis, store } = await setup(t)
  const old = newRecord('m_old')
  await putLegacyRecord(redis, ring, keys, old, GRANT)
  t.equal(await store.put(newRecord('m_old'), { version: 3, grant: GRANT.grant }), undefined, 'a stale version: not written')
  t.equal(await store.put(newRecord('m_old'), { version: 4, grant: 'another-grant' }), undefined, 'another grant: not written')
  t.same(await scanKeys(redis), [keys.merchant('m_old')], 'still the old layout, untouched')
  t.equal(await store.markReauthorizationRequired('m_old', GRANT), 5, 'marked')
  t.match(await store.get('m_old'), { status: 'reauthorization_required', accessToken: old.accessToken, refreshToken: old.refreshToken, version: 5 }, 'still readable')

  const fresh = newRecord('m_old')
  t.equal(await store.put(fresh), 6, 'a new onboarding over it')
  await assertNewLayout(t, redis, 'm_old', fresh)

  await putLegacyRecord(redis, ring, keys, newRecord('m_gone'), GRANT)
  await redis.set(keys.lock('m_gone'), 'x')
  t.equal(await store.delete('m_gone'), true, 'an old record deletes')
  t.same((await scanKeys(redis)).filter(k => k.includes('m_gone')), [], 'no key of it left')
  t.same(await store.countByStatus(), { connected: 1, reauthorization_required: 0 }, 'counts: the rewritten record only')
})

t.test('an old record under a key id no longer configured: EncryptionKeyUnavailableError', async t => {
  const { redis } = await setup(t)
  await putLegacyRecord(redis, createKeyRing([{ kid: 'gone', key: randomBytes(32) }]), keys, newRecord('m_lost'), GRANT)
  let unavailable = 0
  const store = createTokenStore(redis, ring, keys, { onKeyUnavailable: () => { unavailable++ } })
  await t.rejects(store.get('m_lost'), EncryptionKeyUnavailableError)
  t.equal(unavailable, 1)
})

t.test('npm run rotate-keys moves every old record to the new layout, under the current key too', async t => {
  const { redis, store } = await setup(t)
  const K0 = { kid: 'k0', key: randomBytes(32) }
  const written = new Map<string, ReturnType<typeof newRecord>>()
  for (let i = 0; i < 12; i++) {
    const r = newRecord(`m_${i}`)
    written.set(r.merchantId, r)
    // Half under the current key, half under the previous one.
    await putLegacyRecord(redis, i % 2 === 0 ? ring : createKeyRing([K0]), keys, r, GRANT)
  }
  await store.put(newRecord('m_new'))
  const bothKeys = createKeyRing([K1, K0])
  const rotation = createKeyRotation({ redis, keys, keyRing: bothKeys, targetKid: 'k1', store: createTokenStore(redis, bothKeys, keys) })
  t.match(await rotation.run({ dryRun: true }), { stale: 12, current: 1, failed: [] }, 'the dry run finds the 12 old records')
  t.same(await scanKeys(redis, keys.merchantTokens('*')), [keys.merchantTokens('m_new')], 'and writes nothing')
  t.match(await rotation.run(), { complete: true, rotated: 12, current: 1, failed: [] })
  for (const [id, r] of written) {
    await assertNewLayout(t, redis, id, r)
    t.equal(await store.version(id), 5, `${id}: one compare-and-set write`)
  }
  t.same(await store.countByStatus(), { connected: 13, reauthorization_required: 0 }, 'every record counted')
  t.match(await rotation.run({ dryRun: true }), { stale: 0, current: 13 }, 'nothing left to move')
})
