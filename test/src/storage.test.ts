// The storage invariants (docs/architecture.md), checked on a real Redis after real onboardings and refreshes: no
// token, code or secret in plaintext anywhere in Redis, every key under REDIS_KEY_PREFIX,
// ciphertexts bound to their merchant and field, key rotation; and no secret in the logs.
import t from 'tap'
import { scanKeys } from '../helpers/redis.js'
import { setTimeout as sleep } from 'node:timers/promises'
import { randomBytes } from 'node:crypto'
import { Redis } from 'ioredis'
import { build, secrets as newSecrets, CLIENT_ID, type Built, recordIssuedTokens } from '../helper.js'
import type { TestRedis } from '../helpers/redis.js'
import { buildSimulator, type Simulator, type SimulatorOptions } from '../../src/simulator/app.js'
import { createKeyRing, KeyRingError } from '../../src/key-ring.js'
import type { RedisKeys } from '../../src/redis-keys.js'
import { createTokenStore, type TokenStore } from '../../src/token-store.js'

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
  return await ctx.b.app.inject({ url: `/oauth/callback?code=${encodeURIComponent(code)}&state=${encodeURIComponent(state)}` })
}

/** Every key and every value in Redis, whatever its type. */
async function dumpRedis (redis: Redis): Promise<{ keys: string[], text: string }> {
  const keys = await scanKeys(redis)
  const parts: string[] = []
  for (const key of keys) {
    const type = await redis.type(key)
    let value: unknown
    switch (type) {
      case 'string': value = await redis.get(key); break
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
    t.ok(own.includes(`${prefix}merchant:{m_1}`) && own.includes(`${prefix}merchant:{m_2}`), `${prefix} both merchant records are there`)
    t.equal(await ctx.redis.get('other:merchant:{zz}'), 'x', 'a foreign key is untouched')
    t.match(text, 'access_token_enc', 'the dump holds the encrypted records')
    t.same(found(text, secretsOf(ctx, true)), [], `${prefix} no token (raw, segments, decoded payload), code, secret or state value in Redis`)

    const list = await ctx.b.app.inject({ url: '/internal/v1/merchants', headers: ctx.b.auth })
    t.same(list.json<{ items: Array<{ merchant_id: string }> }>().items.map(i => i.merchant_id).sort(), ['m_1', 'm_2'], `${prefix} the list holds only this prefix's merchants`)
  }
})

t.test('a ciphertext moved to another merchant or field does not decrypt; the API answers 5xx without leaking', async t => {
  const ctx = await setup(t)
  for (const m of ['m_a', 'm_b', 'm_c']) t.equal((await onboard(ctx, m)).statusCode, 200, `onboard ${m}`)
  const a = await ctx.store.get('m_a')
  if (a === undefined) throw new Error('m_a not stored')
  const ka = ctx.keys.merchant('m_a')
  const kb = ctx.keys.merchant('m_b')
  const kc = ctx.keys.merchant('m_c')
  const aAccess = String(await ctx.redis.hget(ka, 'access_token_enc'))
  const aRefresh = String(await ctx.redis.hget(ka, 'refresh_token_enc'))
  const cAccess = String(await ctx.redis.hget(kc, 'access_token_enc'))
  const cRefresh = String(await ctx.redis.hget(kc, 'refresh_token_enc'))

  // m_a's access token copied into m_b's record.
  await ctx.redis.hset(kb, 'access_token_enc', aAccess)
  await t.rejects(ctx.store.get('m_b'), KeyRingError, 'copied across merchants: KeyRingError')
  // m_c's access and refresh ciphertexts swapped.
  await ctx.redis.hset(kc, 'access_token_enc', cRefresh, 'refresh_token_enc', cAccess)
  await t.rejects(ctx.store.get('m_c'), KeyRingError, 'swapped fields: KeyRingError')
  // m_a's refresh token ciphertext written as its own access token.
  await ctx.redis.hset(ka, 'access_token_enc', aRefresh)
  await t.rejects(ctx.store.get('m_a'), KeyRingError, 'refresh ciphertext in the access field: KeyRingError')

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
    t.same(found(haystack, [...secretsOf(ctx, true), aAccess, aRefresh, cAccess, cRefresh]), [], `${method} ${url}: no token, ciphertext or secret in the answer`)
    t.notMatch(res.body, /decrypt|KeyRing|aes|authentication failed/i, `${method} ${url}: no internals in the answer`)
  }
  t.equal(ctx.sim.control.stats().refreshes, 0, 'nothing was refreshed with an undecryptable record')
})

t.test('key rotation: `new,old` reads records written under old and writes under new', async t => {
  const oldKey = randomBytes(32).toString('base64')
  const newKey = randomBytes(32).toString('base64')
  const kidOf = (blob: string | null): string => String(blob).split('.')[1]

  const before = await setup(t, { env: { TOKEN_ENCRYPTION_KEYS: `old:${oldKey}` } })
  for (const m of ['m_r1', 'm_r2', 'm_r3']) t.equal((await onboard(before, m)).statusCode, 200, `onboard ${m} under old`)
  const r1 = await before.store.get('m_r1')
  if (r1 === undefined) throw new Error('m_r1 not stored')
  for (const field of ['access_token_enc', 'refresh_token_enc']) {
    t.equal(kidOf(await before.redis.hget(before.keys.merchant('m_r1'), field)), 'old', `${field} names kid old`)
  }

  const r2 = await before.store.get('m_r2')
  const after = await setup(t, { with: before, env: { TOKEN_ENCRYPTION_KEYS: `new:${newKey},old:${oldKey}` } })
  const read = await after.store.get('m_r1')
  t.equal(read?.accessToken, r1.accessToken, 'the new ring reads a record written under old')
  t.equal(read?.refreshToken, r1.refreshToken)
  // The read rewrites the record under the current key (in the background).
  for (let i = 0; i < 50 && kidOf(await after.redis.hget(after.keys.merchant('m_r1'), 'refresh_token_enc')) !== 'new'; i++) await sleep(20)
  for (const field of ['access_token_enc', 'refresh_token_enc']) {
    t.equal(kidOf(await after.redis.hget(after.keys.merchant('m_r1'), field)), 'new', `read ${field} rewritten under kid new`)
  }
  t.equal((await after.store.get('m_r1'))?.refreshToken, r1.refreshToken, 'the rewritten record holds the same refresh token')
  const lookup = await after.b.app.inject({ url: '/internal/v1/merchants/m_r2/access-token', headers: after.b.auth })
  t.equal(lookup.statusCode, 200, 'the app with the new ring serves an old record')
  t.equal(lookup.json<{ access_token: string }>().access_token, r2?.accessToken)

  const refresh = await after.b.app.inject({ method: 'POST', url: '/internal/v1/merchants/m_r1/refresh', headers: after.b.auth })
  t.equal(refresh.statusCode, 200, 'forced refresh under the new ring')
  for (const field of ['access_token_enc', 'refresh_token_enc']) {
    t.equal(kidOf(await after.redis.hget(after.keys.merchant('m_r1'), field)), 'new', `refreshed ${field} names kid new`)
  }
  t.equal((await onboard(after, 'm_r4')).statusCode, 200, 'onboard under the new ring')
  for (const field of ['access_token_enc', 'refresh_token_enc']) {
    t.equal(kidOf(await after.redis.hget(after.keys.merchant('m_r4'), field)), 'new', `new record's ${field} names kid new`)
  }
  t.equal((await after.store.get('m_r4'))?.merchantId, 'm_r4')

  // A ring without the old key cannot read m_r3 (still under old); one without the new key cannot read m_r4.
  const onlyNew = createTokenStore(after.redis, createKeyRing([{ kid: 'new', key: Buffer.from(newKey, 'base64') }]), after.keys)
  await t.rejects(onlyNew.get('m_r3'), KeyRingError, 'old record without the old key: KeyRingError')
  t.equal((await onlyNew.get('m_r4'))?.merchantId, 'm_r4', 'the new key alone reads new records')
  await t.rejects(before.store.get('m_r4'), KeyRingError, 'new record with only the old key: KeyRingError')
  const wrongNew = createTokenStore(after.redis, createKeyRing([{ kid: 'new', key: randomBytes(32) }, { kid: 'old', key: Buffer.from(oldKey, 'base64') }]), after.keys)
  await t.rejects(wrongNew.get('m_r4'), KeyRingError, 'same kid, other key: KeyRingError')

  const { text } = await dumpRedis(after.redis)
  t.same(found(text, [...secretsOf(before, true), ...secretsOf(after, true), oldKey, newKey]), [], 'no plaintext after rotation either')
})

t.test('key rotation: a merchant in reauthorization_required is rewritten under new by a lookup that answers 409', async t => {
  const oldKey = randomBytes(32).toString('base64')
  const newKey = randomBytes(32).toString('base64')
  const kidOf = (blob: string | null): string => String(blob).split('.')[1]

  const before = await setup(t, { env: { TOKEN_ENCRYPTION_KEYS: `old:${oldKey}` } })
  t.equal((await onboard(before, 'm_rot_reauth')).statusCode, 200)
  const written = await before.store.get('m_rot_reauth')
  if (written === undefined) throw new Error('m_rot_reauth not stored')
  const marked = await before.store.markReauthorizationRequired('m_rot_reauth', written.version)
  t.equal(marked, written.version + 1, 'marked reauthorization_required')
  const key = before.keys.merchant('m_rot_reauth')
  for (const field of ['access_token_enc', 'refresh_token_enc']) t.equal(kidOf(await before.redis.hget(key, field)), 'old', `${field} under old`)

  const after = await setup(t, { with: before, env: { TOKEN_ENCRYPTION_KEYS: `new:${newKey},old:${oldKey}` } })
  const lookup = await after.b.app.inject({ url: '/internal/v1/merchants/m_rot_reauth/access-token', headers: after.b.auth })
  t.equal(lookup.statusCode, 409, lookup.body)
  t.equal(lookup.json<{ error: { code: string } }>().error.code, 'reauthorization_required')

  // The read behind the 409 rewrites the record under the current key (in the background).
  for (let i = 0; i < 100 && kidOf(await after.redis.hget(key, 'refresh_token_enc')) !== 'new'; i++) await sleep(20)
  for (const field of ['access_token_enc', 'refresh_token_enc']) t.equal(kidOf(await after.redis.hget(key, field)), 'new', `${field} rewritten under kid new`)
  t.equal(await after.redis.hget(key, 'status'), 'reauthorization_required', 'the rewrite keeps the status')
  t.equal(Number(await after.redis.hget(key, 'version')), (marked ?? 0) + 1, 'one compare-and-set write')
  const rewritten = await after.store.get('m_rot_reauth')
  t.equal(rewritten?.refreshToken, written.refreshToken, 'the same refresh token')
  t.equal(rewritten?.accessToken, written.accessToken, 'the same access token')
  t.match(rewritten, { status: 'reauthorization_required', connectedAt: written.connectedAt, refreshTokenExpiresAt: written.refreshTokenExpiresAt, accessTokenExpiresAt: written.accessTokenExpiresAt })
  // The old key can be retired: a ring of the new key alone reads it.
  const onlyNew = createTokenStore(after.redis, createKeyRing([{ kid: 'new', key: Buffer.from(newKey, 'base64') }]), after.keys)
  t.equal((await onlyNew.get('m_rot_reauth'))?.refreshToken, written.refreshToken, 'readable without the old key')

  const again = await after.b.app.inject({ url: '/internal/v1/merchants/m_rot_reauth/access-token', headers: after.b.auth })
  t.equal(again.statusCode, 409, 'still 409 after the rewrite')
  const status = await after.b.app.inject({ url: '/internal/v1/merchants/m_rot_reauth', headers: after.b.auth })
  t.equal(status.json<{ status: string }>().status, 'reauthorization_required')
  t.equal(after.sim.control.requests().filter(r => r.form.grant_type === 'refresh_token').length, 0, 'no refresh attempted')
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
