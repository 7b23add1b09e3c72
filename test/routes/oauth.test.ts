// GET /oauth/connect and GET /oauth/callback (docs/api.md, browser-facing): a private Redis, the
// simulator over real HTTP, and every response and log line searched for codes, tokens and secrets.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { Redis } from 'ioredis'
import { build, secrets as newSecrets, CLIENT_ID, type Built, type BuildOptions, recordIssuedTokens, until, cookiesOf } from '../helper.js'
import { freePort, withRedisStopped, scanKeys } from '../helpers/redis.js'
import type { RedisKeys } from '../../src/redis-keys.js'
import type { TokenStore } from '../../src/token-store.js'
import { AUTHORIZE_PATH, TOKEN_PATH, buildSimulator, type Simulator, type SimulatorOptions } from '../../src/simulator/app.js'

type Tap = Parameters<Parameters<typeof t.test>[0]>[0]
type Res = Awaited<ReturnType<Built['app']['inject']>>

const STATE = /^[A-Za-z0-9_-]{43}$/
const DEFAULT_REDIRECT = 'http://127.0.0.1:3000/oauth/callback'
const SUCCESS_URL = 'https://portal.example/onboarding/done?from=cybs'
const FAILURE_URL = 'https://portal.example/onboarding/failed'

/** One app under test, with everything secret it has seen (for the leak checks). */
interface Ctx {
  b: Built
  sim: Simulator & { url: string }
  /** Every access and refresh token the simulator sent out. */
  issued: Set<string>
  codes: Set<string>
  states: Set<string>
  /** Awaited by the simulator before it handles a token request. */
  hooks: { beforeToken?: () => Promise<void> }
  closeSim: () => Promise<void>
  /** A Redis connection of the test's own, to the app's private Redis. */
  redis: Redis
  /** The app's own key layout and token store (decorators of the app). */
  keys: RedisKeys
  store: TokenStore
}

const contexts: Ctx[] = []

interface SetupOptions {
  env?: Record<string, string>
  simulatorOptions?: Partial<SimulatorOptions>
  now?: BuildOptions['now']
  /** false: the simulator is never started and its URL points at a closed port. */
  listen?: boolean
}

/** The simulator, with hooks that record the tokens it issues and can act before a token request. */
async function startSim (t: Tap, clientSecret: string, opts: Partial<SimulatorOptions>, listen: boolean): Promise<Pick<Ctx, 'sim' | 'issued' | 'hooks' | 'closeSim'>> {
  const s = buildSimulator({ clientId: CLIENT_ID, clientSecret, ...opts })
  const issued = recordIssuedTokens(s)
  const hooks: Ctx['hooks'] = {}
  s.app.addHook('preHandler', async (request) => {
    if (request.url.startsWith(TOKEN_PATH) && hooks.beforeToken !== undefined) await hooks.beforeToken()
  })
  let closed = !listen
  const closeSim = async (): Promise<void> => {
    if (closed) return
    closed = true
    await s.app.close()
  }
  let url: string
  if (listen) {
    await s.app.listen({ host: '127.0.0.1', port: 0 })
    t.teardown(closeSim)
    url = `http://127.0.0.1:${(s.app.server.address() as { port: number }).port}`
  } else {
    url = `http://127.0.0.1:${await freePort()}`
  }
  return { sim: { ...s, url }, issued, hooks, closeSim }
}

async function setup (t: Tap, opts: SetupOptions = {}): Promise<Ctx> {
  const secrets = newSecrets()
  const s = await startSim(t, secrets.clientSecret, opts.simulatorOptions ?? {}, opts.listen ?? true)
  const b = await build(t, { secrets, simulator: s.sim, now: opts.now, env: { RATE_LIMIT_MAX: '10000', ...opts.env } })
  const redis = new Redis(b.redis.url, { maxRetriesPerRequest: 1 })
  redis.on('error', () => {})
  t.teardown(() => { redis.disconnect() })
  const ctx: Ctx = { b, ...s, codes: new Set(), states: new Set(), redis, keys: b.app.redisKeys, store: b.app.tokenStore }
  contexts.push(ctx)
  return ctx
}

function query (pairs: Array<[string, string]>): string {
  return pairs.length === 0 ? '' : `?${pairs.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&')}`
}

/** The browser that started each state: its binding cookie, which the callback brings back. */
const browsers = new Map<string, string>()

async function connect (ctx: Ctx, pairs: Array<[string, string]> = []): Promise<{ res: Res, location: URL, state: string }> {
  const res = await ctx.b.app.inject({ url: `/oauth/connect${query(pairs)}` })
  if (res.statusCode !== 302) throw new Error(`connect answered ${res.statusCode}: ${res.body}`)
  const location = new URL(String(res.headers.location))
  const state = location.searchParams.get('state') ?? ''
  ctx.states.add(state)
  browsers.set(state, cookiesOf(res.headers))
  return { res, location, state }
}

function issue (ctx: Ctx, merchantId: string): string {
  const code = ctx.sim.control.issueCode(merchantId)
  ctx.codes.add(code)
  return code
}

/** A code the simulator never issued (it answers invalid_grant). */
function fakeCode (ctx: Ctx, length = 32): string {
  const code = randomBytes(length).toString('base64url').slice(0, length)
  ctx.codes.add(code)
  return code
}

/** The callback from another browser than the one that started the state (no binding cookie). */
async function callbackElsewhere (ctx: Ctx, pairs: Array<[string, string]>): Promise<Res> {
  for (const [k, v] of pairs) if (k === 'code' && v.length >= 8) ctx.codes.add(v)
  return await ctx.b.app.inject({ url: `/oauth/callback${query(pairs)}` })
}

/** The callback from the browser that started the state (as CyberSource's redirect brings it). */
async function callback (ctx: Ctx, pairs: Array<[string, string]>): Promise<Res> {
  for (const [k, v] of pairs) if (k === 'code' && v.length >= 8) ctx.codes.add(v)
  const state = pairs.find(([k]) => k === 'state')?.[1]
  const cookie = state === undefined ? undefined : browsers.get(state)
  return await ctx.b.app.inject({ url: `/oauth/callback${query(pairs)}`, headers: cookie === undefined ? {} : { cookie } })
}

const exchanges = (ctx: Ctx): number => ctx.sim.control.requests().filter(r => r.path === TOKEN_PATH && r.form.grant_type === 'authorization_code').length

const merchantKeys = async (ctx: Ctx): Promise<string[]> => await scanKeys(ctx.redis, `${ctx.b.config.redisKeyPrefix}merchant:{*}`)
const stateKeys = async (ctx: Ctx): Promise<string[]> => await scanKeys(ctx.redis, `${ctx.b.config.redisKeyPrefix}state:*`)

/** Strings that must never reach a response body, a Location header or a log line. */
function secretsOf (ctx: Ctx): string[] {
  const out = [ctx.b.secrets.clientSecret, ctx.b.secrets.apiSecret, ctx.b.secrets.otherApiSecret, ...ctx.codes]
  for (const token of ctx.issued) {
    out.push(token)
    const parts = token.split('.')
    if (parts.length === 3) out.push(parts[1], parts[2])
  }
  return out
}

function assertNoLeak (t: Tap, ctx: Ctx, res: Res, what: string): void {
  const haystack = `${res.body}\n${JSON.stringify(res.headers)}`
  const leaked = secretsOf(ctx).filter(s => haystack.includes(s))
  t.same(leaked.map(s => s.slice(0, 12)), [], `${what}: no code, token or secret in the body or headers`)
}

function assertPageHeaders (t: Tap, res: Res, what: string): void {
  t.equal(res.headers['cache-control'], 'no-store', `${what}: Cache-Control no-store`)
  t.equal(res.headers['referrer-policy'], 'no-referrer', `${what}: Referrer-Policy no-referrer`)
  t.match(res.headers['content-security-policy'], /default-src 'self'/, `${what}: helmet CSP`)
  t.equal(res.headers['x-content-type-options'], 'nosniff', `${what}: helmet nosniff`)
  t.ok(res.headers['x-frame-options'] !== undefined || /frame-ancestors/.test(String(res.headers['content-security-policy'])), `${what}: not frameable`)
}

function assertPage (t: Tap, ctx: Ctx, res: Res, status: number, what: string): void {
  t.equal(res.statusCode, status, `${what}: status ${status}`)
  t.match(res.headers['content-type'], /^text\/html/, `${what}: an HTML page`)
  t.equal(res.headers.location, undefined, `${what}: no redirect`)
  assertPageHeaders(t, res, what)
  assertNoLeak(t, ctx, res, what)
}

function assertRedirect (t: Tap, ctx: Ctx, res: Res, base: string, params: Record<string, string>, what: string): URL {
  t.equal(res.statusCode, 302, `${what}: 302`)
  const location = new URL(String(res.headers.location))
  const expected = new URL(base)
  t.equal(location.origin + location.pathname, expected.origin + expected.pathname, `${what}: to the configured URL`)
  for (const [k, v] of expected.searchParams) t.equal(location.searchParams.get(k), v, `${what}: keeps ${k} of the configured URL`)
  for (const [k, v] of Object.entries(params)) t.same(location.searchParams.getAll(k), [v], `${what}: ${k}=${v}`)
  t.same(location.searchParams.getAll('correlation_id'), [String(res.headers['x-correlation-id'])], `${what}: correlation_id is the response's`)
  t.notOk(location.searchParams.has('code'), `${what}: no code in the Location`)
  t.notOk(location.searchParams.has('state'), `${what}: no state in the Location`)
  assertPageHeaders(t, res, what)
  assertNoLeak(t, ctx, res, what)
  return location
}

async function assertNothingStored (t: Tap, ctx: Ctx, merchantIds: string[], what: string): Promise<void> {
  t.same(await merchantKeys(ctx), [], `${what}: no merchant record in Redis`)
  for (const m of merchantIds) t.equal(await ctx.store.get(m), undefined, `${what}: nothing stored for ${m}`)
}

// ---------------------------------------------------------------------------------------------
// GET /oauth/connect

t.test('connect redirects to the CyberSource authorize URL with a fresh stored state', async t => {
  const ctx = await setup(t)
  const { res, location, state } = await connect(ctx)
  t.equal(res.statusCode, 302)
  t.equal(location.origin + location.pathname, `${ctx.sim.url}${AUTHORIZE_PATH}`, 'to the configured authorize URL')
  t.same([...new Set(location.searchParams.keys())].sort(), ['client_id', 'redirect_url', 'state', 'sub'], 'exactly the documented parameters')
  t.same(location.searchParams.getAll('sub'), ['oauth'])
  t.same(location.searchParams.getAll('client_id'), [CLIENT_ID])
  t.same(location.searchParams.getAll('redirect_url'), [DEFAULT_REDIRECT], 'PUBLIC_BASE_URL + /oauth/callback')
  t.equal(location.searchParams.getAll('state').length, 1)
  t.match(state, STATE, 'state: 43 base64url characters (256 bits)')
  assertPageHeaders(t, res, 'connect')
  assertNoLeak(t, ctx, res, 'connect')

  const keys = await stateKeys(ctx)
  t.equal(keys.length, 1, 'one state stored')
  t.equal(keys[0], ctx.keys.state(state), 'under the key of this state')
  t.ok(keys[0].startsWith(ctx.b.config.redisKeyPrefix), 'under the key prefix')
  const ttl = await ctx.redis.ttl(keys[0])
  t.ok(ttl > 590 && ttl <= 600, `TTL ≈ STATE_TTL_SECONDS (600), got ${ttl}`)

  const second = await connect(ctx)
  t.not(second.state, state, 'every connect makes a new state')
  t.equal((await stateKeys(ctx)).length, 2)

  const states = new Set<string>()
  for (let i = 0; i < 20; i++) states.add((await connect(ctx)).state)
  t.equal(states.size, 20, 'states do not repeat')
})

t.test('connect: the state lives STATE_TTL_SECONDS', async t => {
  const ctx = await setup(t, { env: { STATE_TTL_SECONDS: '90' } })
  const { state } = await connect(ctx)
  const ttl = await ctx.redis.ttl(ctx.keys.state(state))
  t.ok(ttl > 80 && ttl <= 90, `TTL ≈ 90, got ${ttl}`)
})

t.test('connect with merchant_id binds the onboarding to it', async t => {
  const ctx = await setup(t)
  const id = 'M'.repeat(64)
  const { state, location } = await connect(ctx, [['merchant_id', id]])
  t.match(state, STATE)
  t.notOk(location.searchParams.has('merchant_id'), 'the merchant id is not sent to CyberSource')
  const raw = await ctx.redis.get(ctx.keys.state(state))
  t.type(raw, 'string', 'state stored')
  t.match(String(raw), id, 'the stored state names the merchant')

  const ok = await callback(ctx, [['code', issue(ctx, id)], ['state', state]])
  assertPage(t, ctx, ok, 200, 'bound onboarding of the same merchant')
  t.equal((await ctx.store.get(id))?.merchantId, id)
})

t.test('connect: PUBLIC_BASE_URL with a path prefix, with and without a trailing slash', async t => {
  for (const base of ['https://partner.example/broker/', 'https://partner.example/broker', 'https://partner.example/broker//']) {
    const ctx = await setup(t, { env: { PUBLIC_BASE_URL: base } })
    const { location } = await connect(ctx)
    t.same(location.searchParams.getAll('redirect_url'), ['https://partner.example/broker/oauth/callback'], base)
  }
  const root = await setup(t, { env: { PUBLIC_BASE_URL: 'https://partner.example/' } })
  t.same((await connect(root)).location.searchParams.getAll('redirect_url'), ['https://partner.example/oauth/callback'])
  const override = await setup(t, { env: { PUBLIC_BASE_URL: 'https://partner.example/broker/', CYBS_REDIRECT_URL: 'https://cb.partner.example/x/cybs-callback' } })
  t.same((await connect(override)).location.searchParams.getAll('redirect_url'), ['https://cb.partner.example/x/cybs-callback'], 'CYBS_REDIRECT_URL overrides')
})

t.test('connect: invalid or repeated merchant_id → 400, nothing stored', async t => {
  const ctx = await setup(t, { env: { ONBOARDING_FAILURE_URL: FAILURE_URL } })
  const bad: Array<[string, Array<[string, string]>]> = [
    ['empty', [['merchant_id', '']]],
    ['65 characters', [['merchant_id', 'a'.repeat(65)]]],
    ['space', [['merchant_id', 'a b']]],
    ['dot', [['merchant_id', 'm.1']]],
    ['slash', [['merchant_id', 'm/1']]],
    ['exclamation', [['merchant_id', 'm!']]],
    ['non-ASCII', [['merchant_id', 'mé']]],
    ['newline', [['merchant_id', 'm\n1']]],
    ['repeated', [['merchant_id', 'm_1'], ['merchant_id', 'm_2']]],
    ['repeated, same value', [['merchant_id', 'm_1'], ['merchant_id', 'm_1']]],
    ['over 2,048 characters', [['merchant_id', 'm_1'], ['x', 'y'.repeat(2049)]]]
  ]
  // What the app keeps from its start (the keep-alive schedule's marker) is not the requests'.
  const before = new Set(await scanKeys(ctx.redis))
  for (const [what, pairs] of bad) {
    const res = await ctx.b.app.inject({ url: `/oauth/connect${query(pairs)}` })
    assertPage(t, ctx, res, 400, `merchant_id ${what}`)
  }
  t.same(await stateKeys(ctx), [], 'no state stored')
  t.same((await scanKeys(ctx.redis)).filter(k => !before.has(k) && !k.startsWith(ctx.keys.rateLimit)), [], 'nothing stored but rate-limit counters')
  const ok = await ctx.b.app.inject({ url: '/oauth/connect?merchant_id=Ab-_09' })
  t.equal(ok.statusCode, 302, 'a valid id is accepted')
})

t.test('browser flow through the simulator consent page: Allow and Deny', async t => {
  const ctx = await setup(t, { simulatorOptions: { redirectUrl: DEFAULT_REDIRECT } })
  const form = { 'content-type': 'application/x-www-form-urlencoded' }

  const { location, state } = await connect(ctx, [['merchant_id', 'browser_m']])
  const page = await fetch(location)
  t.equal(page.status, 200, 'the simulator accepts the authorize URL (registered redirect URL, client id, sub)')
  t.match(await page.text(), `value="${state}"`)
  const allow = await fetch(`${ctx.sim.url}${AUTHORIZE_PATH}`, {
    method: 'POST',
    redirect: 'manual',
    headers: form,
    body: new URLSearchParams({ client_id: CLIENT_ID, redirect_url: DEFAULT_REDIRECT, state, decision: 'allow', merchant_id: 'browser_m' }).toString()
  })
  t.equal(allow.status, 302)
  const back = new URL(String(allow.headers.get('location')))
  t.equal(back.origin + back.pathname, DEFAULT_REDIRECT)
  const code = back.searchParams.get('code') ?? ''
  ctx.codes.add(code)
  const done = await ctx.b.app.inject({ url: `${back.pathname}${back.search}`, headers: { cookie: browsers.get(state) ?? '' } })
  assertPage(t, ctx, done, 200, 'allow')
  t.equal((await ctx.store.get('browser_m'))?.status, 'connected')

  const second = await connect(ctx)
  const deny = await fetch(`${ctx.sim.url}${AUTHORIZE_PATH}`, {
    method: 'POST',
    redirect: 'manual',
    headers: form,
    body: new URLSearchParams({ client_id: CLIENT_ID, redirect_url: DEFAULT_REDIRECT, state: second.state, decision: 'deny' }).toString()
  })
  t.equal(deny.status, 302)
  const denied = new URL(String(deny.headers.get('location')))
  t.equal(denied.search, '', 'CyberSource sends no parameters on deny')
  const res = await ctx.b.app.inject({ url: `${denied.pathname}${denied.search}` })
  assertPage(t, ctx, res, 200, 'deny')
  t.match(res.body, /cancel|denied|did not allow/i)
  t.equal(exchanges(ctx), 1, 'only the allowed onboarding exchanged a code')
})

// ---------------------------------------------------------------------------------------------
// GET /oauth/callback: success

t.test('callback success: 200 page, tokens stored encrypted, state consumed', async t => {
  const ctx = await setup(t)
  const { state } = await connect(ctx)
  const code = issue(ctx, 'm_ok')
  const res = await callback(ctx, [['code', code], ['state', state]])
  assertPage(t, ctx, res, 200, 'success page')
  t.match(res.body, 'm_ok', 'the page names the merchant')

  const reqs = ctx.sim.control.requests()
  t.equal(reqs.length, 1, 'one token request')
  t.equal(reqs[0].form.grant_type, 'authorization_code')
  t.equal(reqs[0].form.code, code, 'the code of the callback was exchanged')
  t.equal(reqs[0].form.client_id, CLIENT_ID)
  t.equal(ctx.sim.control.stats().exchanges, 1)

  const record = await ctx.store.get('m_ok')
  if (record === undefined) throw new Error('no record stored')
  t.equal(record.merchantId, 'm_ok')
  t.equal(record.status, 'connected')
  t.ok(ctx.issued.has(record.accessToken), 'the access token CyberSource issued is stored')
  t.ok(ctx.issued.has(record.refreshToken), 'the refresh token CyberSource issued is stored')
  t.not(record.accessToken, record.refreshToken)
  t.ok(record.accessTokenExpiresAt > Date.now() + 14 * 60_000, 'access token expiry ≈ 15 min ahead')
  t.ok(record.refreshTokenExpiresAt > Date.now() + 364 * 24 * 3600_000, 'refresh token expiry ≈ 1 year ahead')
  const hash = await ctx.redis.hgetall(ctx.keys.merchant('m_ok'))
  const dump = JSON.stringify(hash)
  t.notOk(dump.includes(record.accessToken) || dump.includes(record.refreshToken), 'not stored in plaintext')
  t.same(await stateKeys(ctx), [], 'the state is gone')

  const again = await callbackElsewhere(ctx, [['code', issue(ctx, 'm_ok')], ['state', state]])
  assertPage(t, ctx, again, 401, 'state reused after success, by another browser')
  const back = await callback(ctx, [['code', issue(ctx, 'm_ok')], ['state', state]])
  assertPage(t, ctx, back, 200, 'Back then Allow again in the same browser: the first outcome')
  t.equal(exchanges(ctx), 1, 'no second exchange')
})

t.test('callback success with ONBOARDING_SUCCESS_URL: 302 with merchant_id and correlation_id', async t => {
  const ctx = await setup(t, { env: { ONBOARDING_SUCCESS_URL: SUCCESS_URL, ONBOARDING_FAILURE_URL: FAILURE_URL } })
  const { state } = await connect(ctx, [['merchant_id', 'm_redir']])
  const res = await callback(ctx, [['code', issue(ctx, 'm_redir')], ['state', state]])
  const location = assertRedirect(t, ctx, res, SUCCESS_URL, { merchant_id: 'm_redir' }, 'success redirect')
  t.notOk(location.searchParams.has('reason'))
  t.equal((await ctx.store.get('m_redir'))?.status, 'connected')
})

// ---------------------------------------------------------------------------------------------
// GET /oauth/callback: denial

t.test('callback without parameters: the merchant denied', async t => {
  const page = await setup(t)
  const res = await callback(page, [])
  assertPage(t, page, res, 200, 'deny page')
  await assertNothingStored(t, page, [], 'deny page')
  t.equal(page.sim.control.requests().length, 0, 'no token request')

  const redir = await setup(t, { env: { ONBOARDING_SUCCESS_URL: SUCCESS_URL, ONBOARDING_FAILURE_URL: FAILURE_URL } })
  const r = await callback(redir, [])
  assertRedirect(t, redir, r, FAILURE_URL, { reason: 'access_denied' }, 'deny redirect')
  await assertNothingStored(t, redir, [], 'deny redirect')
  t.equal(redir.sim.control.requests().length, 0, 'no token request')
})

t.test('callback with a valid state and no code: state consumed, treated as denial', async t => {
  const ctx = await setup(t)
  const { state } = await connect(ctx, [['merchant_id', 'm_d']])
  const res = await callback(ctx, [['state', state]])
  assertPage(t, ctx, res, 200, 'state without code')
  t.same(await stateKeys(ctx), [], 'state consumed')
  const reuse = await callbackElsewhere(ctx, [['code', issue(ctx, 'm_d')], ['state', state]])
  assertPage(t, ctx, reuse, 401, 'second use of the state')
  const own = await callback(ctx, [['code', issue(ctx, 'm_d')], ['state', state]])
  assertPage(t, ctx, own, 200, 'second use by the same browser: the denial again')
  t.match(own.body, /cancel/i)

  const empty = await connect(ctx)
  assertPage(t, ctx, await callback(ctx, [['code', ''], ['state', empty.state]]), 200, 'state with an empty code')
  assertPage(t, ctx, await callbackElsewhere(ctx, [['code', issue(ctx, 'm_d')], ['state', empty.state]]), 401, 'second use after an empty code')

  t.equal(ctx.sim.control.requests().length, 0, 'no token request')
  await assertNothingStored(t, ctx, ['m_d'], 'denied')

  const redir = await setup(t, { env: { ONBOARDING_FAILURE_URL: FAILURE_URL } })
  const s2 = await connect(redir)
  assertRedirect(t, redir, await callback(redir, [['state', s2.state]]), FAILURE_URL, { reason: 'access_denied' }, 'state without code, redirect')
  assertPage(t, redir, await callbackElsewhere(redir, [['code', issue(redir, 'm_d')], ['state', s2.state]]), 401, 'second use, redirect configured')
  t.equal(redir.sim.control.requests().length, 0, 'no token request')
})

// ---------------------------------------------------------------------------------------------
// GET /oauth/callback: bad states → 401, never an exchange

t.test('callback: missing, empty or unknown state → 401 and no exchange', async t => {
  for (const env of [{}, { ONBOARDING_FAILURE_URL: FAILURE_URL, ONBOARDING_SUCCESS_URL: SUCCESS_URL }] as Array<Record<string, string>>) {
    const ctx = await setup(t, { env })
    const label = Object.keys(env).length === 0 ? 'page' : 'redirects configured'
    const { state } = await connect(ctx) // a valid state exists, so lookups are not trivially empty
    const cases: Array<[string, Array<[string, string]>]> = [
      ['code without state', [['code', issue(ctx, 'm_x')]]],
      ['empty state', [['code', issue(ctx, 'm_x')], ['state', '']]],
      ['unknown well-formed state', [['code', issue(ctx, 'm_x')], ['state', randomBytes(32).toString('base64url')]]],
      ['garbage state', [['code', issue(ctx, 'm_x')], ['state', 'abc']]],
      ['state with a prefix glob', [['code', issue(ctx, 'm_x')], ['state', '*']]],
      ['valid state with a suffix', [['code', issue(ctx, 'm_x')], ['state', `${state}x`]]],
      ['valid state truncated', [['code', issue(ctx, 'm_x')], ['state', state.slice(0, 42)]]],
      ['valid state in another case', [['code', issue(ctx, 'm_x')], ['state', state.toUpperCase() === state ? state.toLowerCase() : state.toUpperCase()]]]
    ]
    for (const [what, pairs] of cases) assertPage(t, ctx, await callback(ctx, pairs), 401, `${label}: ${what}`)
    t.equal(ctx.sim.control.requests().length, 0, `${label}: no token request`)
    await assertNothingStored(t, ctx, ['m_x'], label)
    t.equal((await stateKeys(ctx)).length, 1, `${label}: the real state is untouched`)
    const real = await callback(ctx, [['code', issue(ctx, 'm_x')], ['state', state]])
    if (Object.keys(env).length === 0) assertPage(t, ctx, real, 200, `${label}: the real state still works`)
    else assertRedirect(t, ctx, real, SUCCESS_URL, { merchant_id: 'm_x' }, `${label}: the real state still works`)
  }
})

t.test('callback: state expired by the clock (Redis key still present) → 401, no exchange', async t => {
  const clock = { ms: Date.now() }
  const ctx = await setup(t, { env: { STATE_TTL_SECONDS: '60' }, now: () => clock.ms })
  const { state } = await connect(ctx)
  clock.ms += 60_001
  t.equal(await ctx.redis.exists(ctx.keys.state(state)), 1, 'Redis has not expired it yet')
  assertPage(t, ctx, await callback(ctx, [['code', issue(ctx, 'm_exp')], ['state', state]]), 401, 'expired state')
  t.equal(ctx.sim.control.requests().length, 0, 'no token request')
  await assertNothingStored(t, ctx, ['m_exp'], 'expired')

  const fresh = await connect(ctx)
  clock.ms += 59_000
  assertPage(t, ctx, await callback(ctx, [['code', issue(ctx, 'm_exp')], ['state', fresh.state]]), 200, 'a state within its TTL still works')
})

t.test('callback: state expired in Redis (STATE_TTL_SECONDS=1) → 401, no exchange', async t => {
  const ctx = await setup(t, { env: { STATE_TTL_SECONDS: '1', ONBOARDING_FAILURE_URL: FAILURE_URL } })
  const { state } = await connect(ctx)
  const pttl = await ctx.redis.pttl(ctx.keys.state(state))
  t.ok(pttl > 0 && pttl <= 1000, `PTTL ≤ 1 s, got ${pttl}`)
  t.ok(await until(async () => await ctx.redis.exists(ctx.keys.state(state)) === 0, 5000), 'Redis expired the state')
  assertPage(t, ctx, await callback(ctx, [['code', issue(ctx, 'm_exp')], ['state', state]]), 401, 'expired state')
  t.equal(ctx.sim.control.requests().length, 0, 'no token request')
  await assertNothingStored(t, ctx, ['m_exp'], 'expired')
})

t.test('callback: 20 concurrent callbacks with one state → exactly one exchange and one success', async t => {
  for (const mode of ['distinct codes', 'one code']) {
    const ctx = await setup(t)
    const { state } = await connect(ctx)
    const shared = issue(ctx, 'm_c0')
    const codes = Array.from({ length: 20 }, (_, i) => mode === 'one code' ? shared : issue(ctx, `m_c${i}`))
    // The starting browser (a double click), and as many other browsers, all at once.
    const results = await Promise.all(codes.flatMap(code => [
      callback(ctx, [['code', code], ['state', state]]),
      callbackElsewhere(ctx, [['code', code], ['state', state]])
    ]))
    const own = results.filter((_, i) => i % 2 === 0)
    const others = results.filter((_, i) => i % 2 === 1)
    t.same(own.map(r => r.statusCode), own.map(() => 200), `${mode}: the starting browser sees the one success every time`)
    t.equal(new Set(own.map(r => /Reference: <strong>([0-9A-Z-]+)/.exec(r.body)?.[1])).size, 1, `${mode}: one outcome, one reference`)
    t.same(others.filter(r => r.statusCode !== 401 && r.statusCode !== 403).map(r => r.statusCode), [], `${mode}: other browsers get 401 or 403`)
    t.equal(exchanges(ctx), 1, `${mode}: one exchange recorded by the simulator`)
    t.equal(ctx.sim.control.stats().exchanges, 1)
    const keys = await merchantKeys(ctx)
    t.equal(keys.length, 1, `${mode}: one merchant stored`)
    const exchangedCode = String(ctx.sim.control.requests()[0].form.code)
    const winner = codes.indexOf(exchangedCode)
    t.ok(winner >= 0, `${mode}: an issued code was exchanged`)
    t.same(keys, [ctx.keys.merchant(mode === 'one code' ? 'm_c0' : `m_c${winner}`)], `${mode}: the winner's merchant was stored`)
    for (const r of results) assertNoLeak(t, ctx, r, `${mode}: concurrent callback`)
  }
})

// ---------------------------------------------------------------------------------------------
// GET /oauth/callback: CyberSource failures

t.test('callback: exchange rejected by CyberSource → 502 / reason=exchange_failed, state stays used', async t => {
  const variants: Array<{ what: string, simulatorOptions?: Partial<SimulatorOptions>, fault?: 'invalid_grant' | 'invalid_client' | 'error_500_oauth', fake?: boolean }> = [
    { what: 'invalid_grant (400)', fault: 'invalid_grant', simulatorOptions: { oauthErrorStatus: 400 } },
    { what: 'invalid_grant with HTTP 500 (CyberSource\'s documented status)', fault: 'invalid_grant' },
    { what: 'invalid_client', fault: 'invalid_client' },
    { what: 'server_error OAuth body with HTTP 500', fault: 'error_500_oauth' },
    { what: 'a code CyberSource never issued', fake: true },
    { what: 'a never-issued code, errors answered with 500', fake: true, simulatorOptions: { oauthErrorStatus: 500 } }
  ]
  for (const v of variants) {
    for (const redirect of [false, true]) {
      const label = `${v.what}${redirect ? ', redirect' : ''}`
      const ctx = await setup(t, { simulatorOptions: v.simulatorOptions, env: redirect ? { ONBOARDING_FAILURE_URL: FAILURE_URL } : {} })
      if (v.fault !== undefined) ctx.sim.control.setBehavior({ fault: v.fault })
      const { state } = await connect(ctx, [['merchant_id', 'm_rej']])
      const code = v.fake === true ? fakeCode(ctx) : issue(ctx, 'm_rej')
      const res = await callback(ctx, [['code', code], ['state', state]])
      if (redirect) assertRedirect(t, ctx, res, FAILURE_URL, { reason: 'exchange_failed' }, label)
      else assertPage(t, ctx, res, 502, label)
      t.equal(exchanges(ctx), 1, `${label}: one exchange attempt`)
      await assertNothingStored(t, ctx, ['m_rej'], label)
      ctx.sim.control.setBehavior({})
      assertPage(t, ctx, await callbackElsewhere(ctx, [['code', issue(ctx, 'm_rej')], ['state', state]]), 401, `${label}: the state stays used`)
      t.equal(exchanges(ctx), 1, `${label}: no exchange for the reused state`)
    }
  }
})

t.test('callback: a token without a readable merchant_id → exchange_failed, nothing stored', async t => {
  for (const fault of ['no_merchant_id', 'not_jwt'] as const) {
    for (const redirect of [false, true]) {
      const label = `${fault}${redirect ? ', redirect' : ''}`
      const ctx = await setup(t, { env: redirect ? { ONBOARDING_FAILURE_URL: FAILURE_URL } : {} })
      ctx.sim.control.setBehavior({ fault })
      const { state } = await connect(ctx)
      const res = await callback(ctx, [['code', issue(ctx, 'm_nomid')], ['state', state]])
      if (redirect) assertRedirect(t, ctx, res, FAILURE_URL, { reason: 'exchange_failed' }, label)
      else assertPage(t, ctx, res, 502, label)
      t.equal(exchanges(ctx), 1, `${label}: one exchange`)
      await assertNothingStored(t, ctx, ['m_nomid'], label)
    }
  }
})

t.test('callback: CyberSource unavailable → 503 / reason=upstream_unavailable, state stays used', async t => {
  const variants: Array<{ what: string, fault?: 'error_500_empty' | 'drop' | 'error_502_html', delayMs?: number, env?: Record<string, string>, listen?: boolean, closeAfterConnect?: boolean }> = [
    { what: '500 with an empty body', fault: 'error_500_empty' },
    { what: '502 HTML', fault: 'error_502_html' },
    { what: 'connection dropped', fault: 'drop' },
    { what: 'timeout (CYBS_TIMEOUT_MS)', delayMs: 5000, env: { CYBS_TIMEOUT_MS: '300' } },
    { what: 'connection refused (nothing listening)', listen: false },
    { what: 'connection refused (simulator closed after use)', closeAfterConnect: true }
  ]
  for (const v of variants) {
    for (const redirect of [false, true]) {
      const label = `${v.what}${redirect ? ', redirect' : ''}`
      const ctx = await setup(t, { listen: v.listen, env: { ...v.env, ...(redirect ? { ONBOARDING_FAILURE_URL: FAILURE_URL } : {}) } })
      if (v.closeAfterConnect === true) {
        // The token client has a kept-alive connection to the simulator before it goes away.
        const first = await connect(ctx)
        t.equal((await callback(ctx, [['code', issue(ctx, 'm_up0')], ['state', first.state]])).statusCode, 200, `${label}: onboarding before the outage`)
      }
      if (v.fault !== undefined || v.delayMs !== undefined) ctx.sim.control.setBehavior({ fault: v.fault, delayMs: v.delayMs })
      const { state } = await connect(ctx, [['merchant_id', 'm_up']])
      const code = issue(ctx, 'm_up')
      const before = exchanges(ctx)
      if (v.closeAfterConnect === true) await ctx.closeSim()
      const res = await callback(ctx, [['code', code], ['state', state]])
      if (redirect) assertRedirect(t, ctx, res, FAILURE_URL, { reason: 'upstream_unavailable' }, label)
      else assertPage(t, ctx, res, 503, label)
      const expected = v.listen === false || v.closeAfterConnect === true ? 0 : 1
      t.equal(exchanges(ctx) - before, expected, `${label}: ${expected} exchange request(s) reached the simulator`)
      t.equal(await ctx.store.get('m_up'), undefined, `${label}: nothing stored`)
      ctx.sim.control.setBehavior({})
      assertPage(t, ctx, await callbackElsewhere(ctx, [['code', issue(ctx, 'm_up')], ['state', state]]), 401, `${label}: the state stays used`)
      t.equal(exchanges(ctx) - before, expected, `${label}: no exchange for the reused state`)
    }
  }
})

t.test('callback: merchant mismatch → 403 / reason=merchant_mismatch, tokens discarded', async t => {
  for (const redirect of [false, true]) {
    const label = redirect ? 'redirect' : 'page'
    const ctx = await setup(t, { env: redirect ? { ONBOARDING_FAILURE_URL: FAILURE_URL, ONBOARDING_SUCCESS_URL: SUCCESS_URL } : {} })
    const { state } = await connect(ctx, [['merchant_id', 'merchant_A']])
    const res = await callback(ctx, [['code', issue(ctx, 'merchant_B')], ['state', state]])
    if (redirect) assertRedirect(t, ctx, res, FAILURE_URL, { reason: 'merchant_mismatch' }, label)
    else assertPage(t, ctx, res, 403, label)
    t.equal(exchanges(ctx), 1, `${label}: the code was exchanged (the merchant id is in the token)`)
    t.ok(ctx.issued.size >= 2, `${label}: CyberSource issued tokens`)
    await assertNothingStored(t, ctx, ['merchant_A', 'merchant_B'], label)
    assertPage(t, ctx, await callbackElsewhere(ctx, [['code', issue(ctx, 'merchant_A')], ['state', state]]), 401, `${label}: the state stays used`)
  }
})

// ---------------------------------------------------------------------------------------------
// GET /oauth/callback: hostile query strings → 400, nothing consumed

t.test('callback: oversized or repeated code/state → 400, no exchange, state not consumed', async t => {
  for (const env of [{}, { ONBOARDING_FAILURE_URL: FAILURE_URL }] as Array<Record<string, string>>) {
    const label = Object.keys(env).length === 0 ? 'page' : 'redirect configured'
    const ctx = await setup(t, { env })
    const { state } = await connect(ctx, [['merchant_id', 'm_big']])
    const other = await connect(ctx)
    const code = issue(ctx, 'm_big')
    const cases: Array<[string, Array<[string, string]>]> = [
      ['code of 2,049 characters', [['code', fakeCode(ctx, 2049)], ['state', state]]],
      ['state of 2,049 characters', [['code', code], ['state', state + 'a'.repeat(2049 - state.length)]]],
      ['repeated code', [['code', code], ['code', code], ['state', state]]],
      ['repeated code, different values', [['code', code], ['code', fakeCode(ctx)], ['state', state]]],
      ['repeated state', [['code', code], ['state', state], ['state', state]]],
      ['repeated state, two valid states', [['code', code], ['state', state], ['state', other.state]]],
      ['state repeated without code', [['state', state], ['state', state]]],
      ['another parameter of 2,049 characters', [['code', code], ['state', state], ['x', 'y'.repeat(2049)]]]
    ]
    for (const [what, pairs] of cases) assertPage(t, ctx, await callback(ctx, pairs), 400, `${label}: ${what}`)
    t.equal(ctx.sim.control.requests().length, 0, `${label}: no token request`)
    await assertNothingStored(t, ctx, ['m_big'], label)
    t.equal((await stateKeys(ctx)).length, 2, `${label}: no state consumed`)

    // 2,048 characters is allowed: it reaches CyberSource, which rejects the unknown code.
    const third = await connect(ctx)
    const max = await callback(ctx, [['code', fakeCode(ctx, 2048)], ['state', third.state]])
    if (Object.keys(env).length === 0) assertPage(t, ctx, max, 502, `${label}: code of 2,048 characters`)
    else assertRedirect(t, ctx, max, FAILURE_URL, { reason: 'exchange_failed' }, `${label}: code of 2,048 characters`)
    t.equal(exchanges(ctx), 1, `${label}: the 2,048-character code was exchanged`)

    const ok = await callback(ctx, [['code', code], ['state', state]])
    t.equal(ok.statusCode, 200, `${label}: the state still works afterwards`)
    t.equal((await ctx.store.get('m_big'))?.merchantId, 'm_big')
  }
})

t.test('callback: a malformed URL → 400 page with no-store, the query (code) never echoed', async t => {
  const ctx = await setup(t)
  const code = `SECRETCODE${randomBytes(8).toString('hex')}`
  ctx.codes.add(code)
  for (const url of [
    `/oauth/callback/%ZZ?code=${code}`,
    `/oauth/callback/%ZZ?code=${code}&state=x`,
    `/oauth/%E0%A4%A?code=${code}`,
    `/oauth/connect/%ZZ?merchant_id=${code}`
  ]) {
    const res = await ctx.b.app.inject({ url })
    t.equal(res.statusCode, 400, `${url}: 400`)
    t.match(String(res.headers['content-type']), /^text\/html/, `${url}: an HTML page, not JSON`)
    t.equal(res.headers['cache-control'], 'no-store', `${url}: no-store`)
    t.equal(res.headers['referrer-policy'], 'no-referrer', `${url}: no referrer`)
    t.equal(res.headers['x-content-type-options'], 'nosniff', `${url}: nosniff`)
    t.equal(res.headers.location, undefined, `${url}: no redirect`)
    t.match(res.body, /<!doctype html>/i)
    t.notOk(res.body.includes(code), `${url}: the code is not in the body`)
    t.notOk(res.body.includes('%ZZ') || res.body.includes('/oauth/callback/'), `${url}: the URL is not echoed`)
    t.notOk(JSON.stringify(res.headers).includes(code), `${url}: nor in a header`)
    assertNoLeak(t, ctx, res, url)
  }
  t.equal(ctx.sim.control.requests().length, 0, 'no token request')
  t.notOk(ctx.b.logs.text().includes(code), 'the code is not logged')
})

// ---------------------------------------------------------------------------------------------
// Redis outages

t.test('callback: Redis down → 503 page, no crash; recovers when Redis is back', async t => {
  const ctx = await setup(t)
  const { state } = await connect(ctx, [['merchant_id', 'm_r']])
  await withRedisStopped(ctx.b.redis, async () => {
    const res = await callback(ctx, [['code', issue(ctx, 'm_r')], ['state', state]])
    assertPage(t, ctx, res, 503, 'callback while Redis is down')
    t.equal(ctx.sim.control.requests().length, 0, 'the code is not exchanged when the state cannot be consumed')
    const con = await ctx.b.app.inject({ url: '/oauth/connect' })
    assertPage(t, ctx, con, 503, 'connect while Redis is down')
    t.equal((await ctx.b.app.inject({ url: '/health/live' })).statusCode, 200, 'the process is alive')
    t.equal((await ctx.b.app.inject({ url: '/health/ready' })).statusCode, 503, 'not ready')
  })

  t.ok(await until(async () => (await ctx.b.app.inject({ url: '/health/ready' })).statusCode === 200, 10_000), 'ready again after Redis restarted')
  const again = await connect(ctx, [['merchant_id', 'm_r']])
  const ok = await callback(ctx, [['code', issue(ctx, 'm_r')], ['state', again.state]])
  assertPage(t, ctx, ok, 200, 'onboarding after recovery')
  t.equal((await ctx.store.get('m_r'))?.status, 'connected')
})

t.test('callback: Redis goes down during the exchange → 503 page, the tokens are not shown', async t => {
  const ctx = await setup(t)
  const { state } = await connect(ctx, [['merchant_id', 'm_mid']])
  let stopped = false
  ctx.hooks.beforeToken = async () => {
    stopped = true
    await ctx.b.redis.stop()
  }
  try {
    const res = await callback(ctx, [['code', issue(ctx, 'm_mid')], ['state', state]])
    ctx.hooks.beforeToken = undefined
    t.ok(stopped, 'Redis was stopped while CyberSource answered')
    assertPage(t, ctx, res, 503, 'tokens could not be stored')
    t.equal(ctx.sim.control.stats().exchanges, 1, 'the exchange happened')
    t.ok(ctx.issued.size >= 2, 'tokens were issued')
    t.equal((await ctx.b.app.inject({ url: '/health/live' })).statusCode, 200, 'the process is alive')
  } finally {
    // The redis helper's teardown cannot stop a server that was already killed.
    if (stopped) await ctx.b.redis.start()
  }
})

t.test('callback: Redis refuses the write of the tokens → an error page; the error lines carry no command arguments', async t => {
  // READONLY is an outage (503, the error wraps Redis's reply); WRONGTYPE is a bug (500, Redis's
  // own error, with ioredis's copy of the command's arguments on it).
  const variants = [
    { what: 'READONLY', status: 503, merchant: 'm_ro', message: /READONLY/, command: [] },
    { what: 'WRONGTYPE', status: 500, merchant: 'm_wt', message: /WRONGTYPE/, command: ['name'] }
  ]
  for (const v of variants) {
    const ctx = await setup(t)
    const { state } = await connect(ctx, [['merchant_id', v.merchant]])
    let broken = false
    if (v.what === 'WRONGTYPE') {
      await ctx.redis.set(ctx.keys.merchant(v.merchant), 'not a hash')
      broken = true
    } else {
      // Once the state is consumed, Redis becomes a replica of nothing (port 1 never hosts
      // another test's Redis): writes answer READONLY.
      ctx.hooks.beforeToken = async () => {
        broken = true
        await ctx.redis.replicaof('127.0.0.1', 1)
      }
    }
    try {
      const res = await callback(ctx, [['code', issue(ctx, v.merchant)], ['state', state]])
      ctx.hooks.beforeToken = undefined
      t.ok(broken, `${v.what}: the write was refused`)
      assertPage(t, ctx, res, v.status, `${v.what}: tokens could not be stored`)
    } finally {
      if (broken && v.what === 'READONLY') await ctx.redis.replicaof('NO', 'ONE')
    }
    t.equal(ctx.sim.control.stats().exchanges, 1, `${v.what}: the exchange happened`)

    const lost = ctx.b.logs.lines().filter(l => l.msg === 'could not store the tokens of a completed onboarding; the merchant must connect again')
    t.equal(lost.length, 1, `${v.what}: one error line for the lost tokens`)
    t.match(lost[0]?.err, { message: v.message }, `${v.what}: it names what Redis answered`)
    t.same(Object.keys((lost[0]?.err as { command?: object } | undefined)?.command ?? {}), v.command, `${v.what}: of the command, at most its name`)
    const text = ctx.b.logs.text()
    t.notMatch(text, /"args"/, `${v.what}: no command arguments in any line`)
    t.notMatch(text, /access_token_enc|refresh_token_enc|connected_at/, `${v.what}: nor the record's field names`)
    t.same(secretsOf(ctx).filter(s => text.includes(s)).map(s => s.slice(0, 12)), [], `${v.what}: no code, token or secret`)
  }
})

// ---------------------------------------------------------------------------------------------
// Logs of every flow above

t.test('logs contain no code, token, secret or callback query string', async t => {
  t.ok(contexts.length > 20, 'the flows above ran')
  const all = contexts.map(c => c.b.logs.text()).join('')
  t.match(all, 'merchant connected', 'logs were captured')
  t.match(all, 'code exchange failed', 'failures were logged')
  for (const [i, ctx] of contexts.entries()) {
    const text = ctx.b.logs.text()
    const leaked = secretsOf(ctx).filter(s => text.includes(s))
    t.same(leaked.map(s => s.slice(0, 12)), [], `app ${i}: no code, token or secret in the logs`)
    const states = [...ctx.states].filter(s => s !== '' && text.includes(s))
    t.same(states, [], `app ${i}: no state value in the logs`)
    t.notMatch(text, /[?&](code|state)=/, `app ${i}: no callback query string in the logs`)
    t.notMatch(text, /\/oauth\/callback\?/, `app ${i}: no callback URL with its query`)
  }
})
