// The storage invariants (docs/architecture.md), checked on a real Redis after real onboardings and refreshes: no
// token, code or secret in plaintext anywhere in Redis, every key under REDIS_KEY_PREFIX,
// ciphertexts bound to their merchant and tamper-evident, key rotation; and no secret in the logs.
import t from 'tap'
import { scanKeys } from '../helpers/redis.js'
import { randomBytes } from 'node:crypto'
import { Redis } from 'ioredis'
import { build, cookiesOf, secrets as newSecrets, CLIENT_ID, type Built, recordIssuedTokens, until } from '../helper.js'
import type { TestRedis } from '../helpers/redis.js'
import { buildSimulator, type Simulator, type SimulatorOptions } from '../../src/simulator/app.js'
import { createKeyRing, KeyRingError } from '../../src/key-ring.js'
import { kidOf } from '../../src/record-codec.js'
import type { RedisKeys } from '../../src/redis-keys.js'
import { createTokenStore, type TokenStore } from '../../src/token-store.js'
import { createKeyRotation } from '../../src/key-rotation.js'

type Tap = Parameters<Parameters<typeof t.test>[0]>[0]
type Res = Awaited<ReturnType<Built['app']['inject']>>

interface Ctx {
  b: Built
  sim: Simulator & { url: string }
  issued: Set<string>
  codes: Set<string>
  states: Set<string>
  redis: Redis
  /** The app's own key layout and token store (decorators of the app). */
  keys: RedisKeys
  store: TokenStore
}

const contexts: Ctx[] = []

/** The simulator over real HTTP, recording every token it issues. */
async function startSim (t: Tap, clientSecret: string, opts: Partial<SimulatorOptions> = {}): Promise<{ sim: Simulator & { url: string }, issued: Set<string> }> {
  const s = buildSimulator({ clientId: CLIENT_ID, clientSecret, ...opts })
  const issued = recordIssuedTokens(s)
  await s.app.listen({ host: '127.0.0.1', port: 0 })
  t.teardown(async () => await s.app.close())
  return { sim: { ...s, url: `http://127.0.0.1:${(s.app.server.address() as { port: number }).port}` }, issued }
}

interface SetupOptions {
  env?: Record<string, string>
  simulatorOptions?: Partial<SimulatorOptions>
  /** Share a Redis, a simulator and the secrets with another app. */
  with?: Ctx
  redis?: TestRedis
}

async function setup (t: Tap, opts: SetupOptions = {}): Promise<Ctx> {
  const secrets = opts.with?.b.secrets ?? newSecrets()
  const s = opts.with === undefined ? await startSim(t, secrets.clientSecret, opts.simulatorOptions) : { sim: opts.with.sim, issued: opts.with.issued }
  const b = await build(t, {
    secrets,
    simulator: s.sim,
    redis: opts.redis ?? opts.with?.b.redis,
    env: { RATE_LIMIT_MAX: '10000', ...opts.env }
  })
  const redis = new Redis(b.redis.url, { maxRetriesPerRequest: 1 })
  redis.on('error', () => {})
  t.teardown(() => { redis.disconnect() })
  const ctx: Ctx = { b, ...s, codes: opts.with?.codes ?? new Set(), states: opts.with?.states ?? new Set(), redis, keys: b.app.redisKeys, store: b.app.tokenStore }
  contexts.push(ctx)
  return ctx
}

/** connect → code → callback, as the browser would; returns the callback response. */
async function onboard (ctx: Ctx, merchantId: string, bind = true): Promise<Res> {
  const con = await ctx.b.app.inject({ url: `/oauth/connect${bind ? `?merchant_id=${merchantId}` : ''}` })
  const state = new URL(String(con.headers.location)).searchParams.get('state') ?? ''
  ctx.states.add(state)
  const code = ctx.sim.control.issueCode(merchantId)
  ctx.codes.add(code)
  return await ctx.b.app.inject({ url: `/oauth/callback?code=${encodeURIComponent(code)}&state=${encodeURIComponent(state)}`, headers: { cookie: cookiesOf(con.headers) } })
}

/** Every key and every value in Redis, whatever its type. */
async function dumpRedis (redis: Redis): Promise<{ keys: string[], text: string }> {
  const keys = await scanKeys(redis)
  const parts: string[] = []
  for (const key of keys) {
    const type = await redis.type(key)
    let value: unknown
    switch (type) {
      // Byte for byte (binary values): a token in plaintext would show as itself.
      case 'string': value = (await redis.getBuffer(key))?.toString('latin1'); break
      case 'hash': value = await redis.hgetall(key); break
      case 'list': value = await redis.lrange(key, 0, -1); break
      case 'set': value = await redis.smembers(key); break
      case 'zset': value = await redis.zrange(key, 0, -1, 'WITHSCORES'); break
      case 'stream': value = await redis.xrange(key, '-', '+'); break
      default: value = `<${type}>`
    }
    parts.push(`${key} ${type} ${JSON.stringify(value)}`)
  }
  return { keys, text: parts.join('\n') }
}

/** A token and the forms of it that must not be found: raw, its segments, its decoded payload. */
function tokenForms (token: string): string[] {
  const forms = [token, Buffer.from(token).toString('base64')]
  const parts = token.split('.')
  if (parts.length === 3) {
    forms.push(parts[1], parts[2])
    const payload = Buffer.from(parts[1], 'base64url').toString('utf8')
    forms.push(payload)
    try {
      const claims = JSON.parse(payload) as Record<string, unknown>
      if (typeof claims.jti === 'string') forms.push(claims.jti)
    } catch {}
  }
  return forms
}

function secretsOf (ctx: Ctx, withStates: boolean): string[] {
  const s = ctx.b.secrets
  const out = [s.clientSecret, s.apiSecret, s.otherApiSecret, s.encryptionKey, ...ctx.codes]
  for (const token of ctx.issued) out.push(...tokenForms(token))
  if (withStates) out.push(...[...ctx.states].filter(x => x !== ''))
  return out
}

function found (haystack: string, needles: string[]): string[] {
  return needles.filter(n => haystack.includes(n)).map(n => `${n.slice(0, 16)}…`)
}

// ---------------------------------------------------------------------------------------------

t.test('Redis holds no token, code or secret in plaintext; every key is under the prefix', async t => {
  for (const prefix of ['cybs:', 'acme:']) {
    const ctx = await setup(t, { env: prefix === 'cybs:' ? {} : { REDIS_KEY_PREFIX: prefix }, simulatorOptions: { rotateRefreshTokens: true, tokenPadBytes: 600 } })
    t.equal(ctx.b.config.redisKeyPrefix, prefix)
    // Keys of someone else sharing the Redis: not touched, not listed.
    await ctx.redis.set('other:merchant:{zz}', 'x')
    for (const [i, m] of ['m_1', 'm_2', 'm_3'].entries()) t.equal((await onboard(ctx, m, i !== 1)).statusCode, 200, `${prefix} onboard ${m}`)
    const refresh = await ctx.b.app.inject({ method: 'POST', url: '/internal/v1/merchants/m_1/refresh', headers: ctx.b.auth })
    t.equal(refresh.statusCode, 200, `${prefix} forced refresh`)
    t.equal(ctx.sim.control.stats().refreshes, 1)
    const lookup = await ctx.b.app.inject({ url: '/internal/v1/merchants/m_2/access-token', headers: ctx.b.auth })
    t.equal(lookup.statusCode, 200)
    t.ok(ctx.issued.has((lookup.json<{ access_token: string }>()).access_token), 'the lookup serves an issued token')
    const pending = await ctx.b.app.inject({ url: '/oauth/connect?merchant_id=m_4' })
    ctx.states.add(new URL(String(pending.headers.location)).searchParams.get('state') ?? '')
    const del = await ctx.b.app.inject({ method: 'DELETE', url: '/internal/v1/merchants/m_3', headers: ctx.b.auth })
    t.equal(del.statusCode, 204)

    t.ok(ctx.issued.size >= 8, `${prefix} tokens were issued (3 onboardings, 1 rotated refresh)`)
    t.ok(ctx.codes.size >= 3)
    const { keys, text } = await dumpRedis(ctx.redis)
    const own = keys.filter(k => k !== 'other:merchant:{zz}')
    t.ok(own.length >= 3, `${prefix} keys written: ${own.join(', ')}`)
    t.same(own.filter(k => !k.startsWith(prefix)), [], `${prefix} every key the service wrote starts with the prefix`)
    t.same(own.filter(k => k.includes('m_3')), [], `${prefix} the deleted merchant left no key`)
    t.ok(['m_1', 'm_2'].every(m => own.includes(`${prefix}merchant:{${m}}`) && own.includes(`${prefix}merchant:{${m}}:tokens`)), `${prefix} both merchant records are there, metadata and tokens`)
    t.ok(own.includes(`${prefix}merchant-counts`), `${prefix} and the counters`)
    t.equal(await ctx.redis.get('other:merchant:{zz}'), 'x', 'a foreign key is untouched')
    t.match(text, `${prefix}merchant:{m_1}:tokens string`, 'the dump holds the encrypted records')
    t.same(found(text, secretsOf(ctx, true)), [], `${prefix} no token (raw, segments, decoded payload), code, secret or state value in Redis`)

    const list = await ctx.b.app.inject({ url: '/internal/v1/merchants', headers: ctx.b.auth })
    t.same(list.json<{ items: Array<{ merchant_id: string }> }>().items.map(i => i.merchant_id).sort(), ['m_1', 'm_2'], `${prefix} the list holds only this prefix's merchants`)
  }
})

t.test('a ciphertext moved to another merchant, altered or cut does not decrypt; the API answers 5xx without leaking', async t => {
  const ctx = await setup(t)
  for (const m of ['m_a', 'm_b', 'm_c']) t.equal((await onboard(ctx, m)).statusCode, 200, `onboard ${m}`)
  const a = await ctx.store.get('m_a')
  if (a === undefined) throw new Error('m_a not stored')
  const blobOf = async (m: string): Promise<Buffer> => {
    const blob = await ctx.redis.getBuffer(ctx.keys.merchantTokens(m))
    if (blob === null) throw new Error(`${m}: no tokens key`)
    return blob
  }
  const aBlob = await blobOf('m_a')
  const cBlob = await blobOf('m_c')

  // m_a's tokens copied into m_b's record.
  await ctx.redis.set(ctx.keys.merchantTokens('m_b'), aBlob, 'KEEPTTL')
  await t.rejects(ctx.store.get('m_b'), KeyRingError, 'copied across merchants: KeyRingError')
  // One byte of m_c's ciphertext changed.
  const altered = Buffer.from(cBlob)
  altered[altered.length - 1] ^= 0x01
  await ctx.redis.set(ctx.keys.merchantTokens('m_c'), altered, 'KEEPTTL')
  await t.rejects(ctx.store.get('m_c'), KeyRingError, 'an altered ciphertext: KeyRingError')
  // m_a's tokens cut short.
  await ctx.redis.set(ctx.keys.merchantTokens('m_a'), aBlob.subarray(0, aBlob.length - 40), 'KEEPTTL')
  await t.rejects(ctx.store.get('m_a'), KeyRingError, 'a truncated ciphertext: KeyRingError')
  const blobForms = [aBlob, cBlob].flatMap(b => [b.toString('base64'), b.toString('base64url'), b.toString('hex')])

  const calls: Array<[string, string]> = [
    ['GET', '/internal/v1/merchants/m_b/access-token'],
    ['GET', '/internal/v1/merchants/m_c/access-token'],
    ['POST', '/internal/v1/merchants/m_c/refresh'],
    ['POST', '/internal/v1/merchants/m_b/refresh']
  ]
  for (const [method, url] of calls) {
    const res = await ctx.b.app.inject({ method: method as 'GET' | 'POST', url, headers: ctx.b.auth })
    t.ok(res.statusCode >= 500 && res.statusCode < 600, `${method} ${url}: 5xx (${res.statusCode})`)
    t.match(res.headers['content-type'], /application\/json/)
    const body = res.json<{ error: { code: string, message: string } }>()
    t.type(body.error.code, 'string', `${method} ${url}: the JSON error shape`)
    const haystack = `${res.body}\n${JSON.stringify(res.headers)}`
    t.same(found(haystack, [...secretsOf(ctx, true), ...blobForms]), [], `${method} ${url}: no token, ciphertext or secret in the answer`)
    t.notMatch(res.body, /decrypt|KeyRing|aes|authentication failed/i, `${method} ${url}: no internals in the answer`)
  }
  t.equal(ctx.sim.control.stats().refreshes, 0, 'nothing was refreshed with an undecryptable record')
})

/** The key id of a merchant's encrypted tokens, as stored. */
async function storedKid (ctx: Ctx, merchantId: string): Promise<string> {
  const blob = await ctx.redis.getBuffer(ctx.keys.merchantTokens(merchantId))
  return blob === null ? '(none)' : kidOf(blob)
}
const ringOf = (...keys: Array<[string, string]>): ReturnType<typeof createKeyRing> => createKeyRing(keys.map(([kid, key]) => ({ kid, key: Buffer.from(key, 'base64') })))

t.test('key rotation: `new,old` reads records under old without rewriting them; refreshes and onboardings write under new; rotate-keys moves the rest', async t => {
  const oldKey = randomBytes(32).toString('base64')
  const newKey = randomBytes(32).toString('base64')
  const before = await setup(t, { env: { TOKEN_ENCRYPTION_KEYS: `old:${oldKey}` } })
  const olds = ['m_r1', 'm_r2', 'm_r3', 'm_r5']
  for (const m of olds) t.equal((await onboard(before, m)).statusCode, 200, `onboard ${m} under old`)
  const r5 = await before.store.getMeta('m_r5')
  if (r5 === undefined) throw new Error('m_r5 not stored')
  t.equal(await before.store.markReauthorizationRequired('m_r5', r5), r5.version + 1, 'm_r5 marked reauthorization_required')
  const written = new Map<string, { accessToken: string, refreshToken: string, version: number }>()
  for (const m of olds) {
    const r = await before.store.get(m)
    if (r === undefined) throw new Error(`${m} not stored`)
    written.set(m, r)
    t.equal(await storedKid(before, m), 'old', `${m} under old`)
  }

  const after = await setup(t, { with: before, env: { TOKEN_ENCRYPTION_KEYS: `new:${newKey},old:${oldKey}` } })
  const read = await after.store.get('m_r1')
  t.ok(read?.accessToken === written.get('m_r1')?.accessToken && read?.refreshToken === written.get('m_r1')?.refreshToken, 'the new ring reads a record under old')
  for (const m of ['m_r1', 'm_r2']) {
    const lookup = await after.b.app.inject({ url: `/internal/v1/merchants/${m}/access-token`, headers: after.b.auth })
    t.equal(lookup.statusCode, 200, `the replica with new,old serves ${m}`)
    t.ok(lookup.json<{ access_token: string }>().access_token === written.get(m)?.accessToken, `${m}: the stored token`)
  }
  const reauth = await after.b.app.inject({ url: '/internal/v1/merchants/m_r5/access-token', headers: after.b.auth })
  t.equal(reauth.statusCode, 409)
  t.equal(reauth.json<{ error: { code: string } }>().error.code, 'reauthorization_required')
  t.equal((await after.b.app.inject({ url: '/internal/v1/merchants/m_r3', headers: after.b.auth })).statusCode, 200)
  // An old-config replica still reads every one of them: nothing was rewritten under new.
  const oldOnly = createTokenStore(after.redis, ringOf(['old', oldKey]), after.keys)
  for (const m of olds) {
    t.equal(await storedKid(after, m), 'old', `${m}: reads left it under old`)
    t.equal(await after.store.version(m), written.get(m)?.version, `${m}: reads did not write`)
    t.ok((await oldOnly.get(m))?.refreshToken === written.get(m)?.refreshToken, `${m}: readable with old alone`)
  }

  const refresh = await after.b.app.inject({ method: 'POST', url: '/internal/v1/merchants/m_r1/refresh', headers: after.b.auth })
  t.equal(refresh.statusCode, 200, 'forced refresh under the new ring')
  t.equal(await storedKid(after, 'm_r1'), 'new', 'a refresh writes under new')
  t.equal((await onboard(after, 'm_r4')).statusCode, 200, 'onboard under the new ring')
  t.equal(await storedKid(after, 'm_r4'), 'new', 'an onboarding writes under new')
  for (const m of ['m_r2', 'm_r3', 'm_r5']) {
    t.equal(await storedKid(after, m), 'old', `${m}: still under old before rotate-keys`)
    t.equal(await after.store.version(m), written.get(m)?.version)
  }

  const rotation = createKeyRotation({ redis: after.b.app.redis, keys: after.keys, keyRing: createKeyRing(after.b.config.encryptionKeys), targetKid: 'new' })
  const summary = await rotation.run()
  t.match(summary, { complete: true, rotated: 3, current: 2, scanned: 5, failed: [] }, 'rotate-keys: the three records under old, nothing else')
  const onlyNew = createTokenStore(after.redis, ringOf(['new', newKey]), after.keys)
  for (const m of [...olds, 'm_r4']) t.equal((await onlyNew.get(m))?.merchantId, m, `${m}: the new key alone reads it`)
  for (const m of ['m_r2', 'm_r3', 'm_r5']) {
    const now = await onlyNew.get(m)
    t.ok(now?.accessToken === written.get(m)?.accessToken && now?.refreshToken === written.get(m)?.refreshToken, `${m}: the same tokens`)
    t.equal(now?.version, (written.get(m)?.version ?? 0) + 1, `${m}: one compare-and-set write`)
  }
  t.equal((await onlyNew.getMeta('m_r5'))?.status, 'reauthorization_required', 'the rotation keeps the status')
  const lookup = await after.b.app.inject({ url: '/internal/v1/merchants/m_r2/access-token', headers: after.b.auth })
  t.ok(lookup.statusCode === 200 && lookup.json<{ access_token: string }>().access_token === written.get('m_r2')?.accessToken, 'the replica serves the rotated record')
  t.equal((await after.b.app.inject({ url: '/internal/v1/merchants/m_r5/access-token', headers: after.b.auth })).statusCode, 409, 'still 409 after the rotation')
  t.equal(after.sim.control.requests().filter(r => r.form.grant_type === 'refresh_token').length, 1, 'one refresh in all: the forced one')
  const wrongNew = createTokenStore(after.redis, createKeyRing([{ kid: 'new', key: randomBytes(32) }]), after.keys)
  await t.rejects(wrongNew.get('m_r4'), KeyRingError, 'same kid, other key: KeyRingError')

  const { text } = await dumpRedis(after.redis)
  t.same(found(text, [...secretsOf(before, true), ...secretsOf(after, true), oldKey, newKey]), [], 'no plaintext after rotation either')
})

t.test('key rotation: a replica without the key of a record answers 500 encryption_key_unavailable for that merchant only, counts it, and stays up', async t => {
  const oldKey = randomBytes(32).toString('base64')
  const newKey = randomBytes(32).toString('base64')
  const stale = await setup(t, { env: { TOKEN_ENCRYPTION_KEYS: `old:${oldKey}` } })
  for (const m of ['m_k1', 'm_k2']) t.equal((await onboard(stale, m)).statusCode, 200, `onboard ${m} under old`)
  const k1Blob = await stale.redis.getBuffer(stale.keys.merchantTokens('m_k1')) ?? Buffer.alloc(0)
  const k1Ciphertexts = [k1Blob.toString('base64'), k1Blob.toString('base64url'), k1Blob.toString('hex')]
  // A replica that put new first while this one was never given it (phase 1 skipped).
  const ahead = await setup(t, { with: stale, env: { TOKEN_ENCRYPTION_KEYS: `new:${newKey},old:${oldKey}` } })
  t.equal((await ahead.b.app.inject({ method: 'POST', url: '/internal/v1/merchants/m_k1/refresh', headers: ahead.b.auth })).statusCode, 200)
  t.equal(await storedKid(ahead, 'm_k1'), 'new')
  // The change message drops m_k1 from the stale replica's cache.
  t.ok(await until(() => stale.b.app.tokenService.peekAccessToken('m_k1') === undefined, 5000), 'the stale replica forgot its cached m_k1')

  const counted = async (): Promise<number> => (await stale.b.app.metrics.keyUnavailable.get()).values[0]?.value ?? 0
  t.equal(await counted(), 0)
  const calls: Array<['GET' | 'POST', string]> = [['GET', '/internal/v1/merchants/m_k1/access-token'], ['POST', '/internal/v1/merchants/m_k1/refresh']]
  for (const [i, [method, url]] of calls.entries()) {
    const res = await stale.b.app.inject({ method, url, headers: stale.b.auth })
    t.equal(res.statusCode, 500, `${method} ${url}: 500`)
    t.equal(res.json<{ error: { code: string } }>().error.code, 'encryption_key_unavailable', `${method} ${url}: its own code`)
    const haystack = `${res.body}\n${JSON.stringify(res.headers)}`
    t.same(found(haystack, [...secretsOf(stale, true), ...secretsOf(ahead, true), ...k1Ciphertexts, oldKey, newKey]), [], `${method} ${url}: no token, ciphertext or key in the answer`)
    t.equal(await counted(), i + 1, 'counted in cybs_encryption_key_unavailable_total')
  }
  const metrics = await stale.b.app.inject({ url: '/metrics' })
  t.match(metrics.body, /^cybs_encryption_key_unavailable_total 2$/m, 'exposed on /metrics')
  t.equal(ahead.sim.control.stats().refreshes, 1, 'the stale replica refreshed nothing')

  const other = await stale.b.app.inject({ url: '/internal/v1/merchants/m_k2/access-token', headers: stale.b.auth })
  t.equal(other.statusCode, 200, 'another merchant, under old, is served')
  t.equal((await stale.b.app.inject({ url: '/internal/v1/merchants/m_k1', headers: stale.b.auth })).json<{ status: string }>().status, 'connected', 'the status route needs no key')
  t.equal((await stale.b.app.inject({ url: '/health/live' })).statusCode, 200, 'the process is up')
  t.equal((await stale.b.app.inject({ url: '/health/ready' })).statusCode, 200, 'and ready')
  t.equal((await ahead.b.app.inject({ url: '/internal/v1/merchants/m_k1/access-token', headers: ahead.b.auth })).statusCode, 200, 'the replica with both keys serves m_k1')
  // Recovery: the stale replica given the phase 2 list reads it.
  const fixed = createTokenStore(stale.redis, ringOf(['old', oldKey], ['new', newKey]), stale.keys)
  t.equal((await fixed.get('m_k1'))?.merchantId, 'm_k1', 'readable once the replica has the new key')
})

t.test('logs contain no code, token, secret or callback query string', async t => {
  t.ok(contexts.length >= 5, 'the flows above ran')
  const all = contexts.map(c => c.b.logs.text()).join('')
  t.match(all, 'merchant connected', 'logs were captured')
  t.match(all, 'access token refreshed')
  t.match(all, 'internal api call')
  for (const [i, ctx] of contexts.entries()) {
    const text = ctx.b.logs.text()
    t.same(found(text, secretsOf(ctx, true)), [], `app ${i}: no code, token, secret or state in the logs`)
    t.notMatch(text, /[?&](code|state)=/, `app ${i}: no callback query string`)
    t.notMatch(text, /Bearer /, `app ${i}: no authorization header`)
  }
})
