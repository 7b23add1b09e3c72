import t from 'tap'
import { request } from 'undici'
import { AUTHORIZE_PATH, HUGE_BODY_BYTES, TOKEN_PATH, buildSimulator, type SimulatorOptions, type Simulator } from '../../../src/simulator/app.js'
import { decodeJwtPayload } from '../../../src/cybersource/jwt.js'

const CLIENT_ID = 'sim-client'
const CLIENT_SECRET = 'sim-secret-value'
const REDIRECT = 'https://partner.example/oauth/callback'
const FORM = { 'content-type': 'application/x-www-form-urlencoded' }

type Test = { teardown: (fn: () => unknown) => void }

function build (test: Test, overrides: Partial<SimulatorOptions> = {}): Simulator & { clock: { ms: number } } {
  const clock = { ms: Date.UTC(2030, 0, 1) }
  const sim = buildSimulator({ clientId: CLIENT_ID, clientSecret: CLIENT_SECRET, now: () => clock.ms, ...overrides })
  test.teardown(async () => { await sim.app.close() })
  return { ...sim, clock }
}

function authorizeUrl (params: Record<string, string>): string {
  return `${AUTHORIZE_PATH}?${new URLSearchParams(params).toString()}`
}

const valid = { sub: 'oauth', client_id: CLIENT_ID, redirect_url: REDIRECT, state: 'st-123' }

async function token (sim: Simulator, fields: Record<string, string>, headers: Record<string, string> = {}) {
  const res = await sim.app.inject({
    method: 'POST',
    url: TOKEN_PATH,
    headers: { ...FORM, ...headers },
    payload: new URLSearchParams(fields).toString()
  })
  let body: Record<string, unknown> = {}
  try { body = res.json() } catch {}
  return { res, body }
}

const exchange = async (sim: Simulator, code: string) =>
  await token(sim, { client_id: CLIENT_ID, client_secret: CLIENT_SECRET, grant_type: 'authorization_code', code })
const refresh = async (sim: Simulator, refreshToken: string) =>
  await token(sim, { client_id: CLIENT_ID, client_secret: CLIENT_SECRET, grant_type: 'refresh_token', refresh_token: refreshToken })

async function decide (sim: Simulator, fields: Record<string, string>) {
  return await sim.app.inject({ method: 'POST', url: AUTHORIZE_PATH, headers: FORM, payload: new URLSearchParams(fields).toString() })
}

t.test('authorize page', async t => {
  const sim = build(t, { partnerName: 'Acme Payments', defaultMerchantId: 'acme_m1' })
  const res = await sim.app.inject({ url: authorizeUrl(valid) })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/html/)
  t.match(res.headers['content-security-policy'], /default-src 'none'/)
  t.match(res.body, 'Acme Payments wants access to your account')
  t.match(res.body, /<input type="text" id="merchant_id" name="merchant_id" value="acme_m1"[^>]*pattern="\[A-Za-z0-9_\\-\]\{1,64\}"/)
  t.match(res.body, /<button[^>]*>Allow<\/button>/)
  t.match(res.body, /<button[^>]*>Deny<\/button>/)
  t.match(res.body, `<form method="post" action="${AUTHORIZE_PATH}">`)
  t.match(res.body, `<input type="hidden" name="client_id" value="${CLIENT_ID}">`)
  t.match(res.body, `<input type="hidden" name="redirect_url" value="${REDIRECT}">`)
  t.match(res.body, '<input type="hidden" name="state" value="st-123">')

  const noState = await sim.app.inject({ url: authorizeUrl({ sub: 'oauth', client_id: CLIENT_ID, redirect_url: REDIRECT }) })
  t.equal(noState.statusCode, 200)
  t.notMatch(noState.body, 'name="state"')
  t.match(noState.body, 'value="acme_m1"')
})

t.test('authorize page default merchant id', async t => {
  const sim = build(t)
  const res = await sim.app.inject({ url: authorizeUrl(valid) })
  t.match(res.body, 'name="merchant_id" value="demo_merchant"')
})

t.test('authorize page rejects invalid requests with a 400 page', async t => {
  const sim = build(t, { redirectUrl: REDIRECT })
  const cases: Array<[string, string]> = [
    ['missing sub', authorizeUrl({ client_id: CLIENT_ID, redirect_url: REDIRECT })],
    ['wrong sub', authorizeUrl({ ...valid, sub: 'openid' })],
    ['missing client_id', authorizeUrl({ sub: 'oauth', redirect_url: REDIRECT })],
    ['unknown client_id', authorizeUrl({ ...valid, client_id: 'someone-else' })],
    ['missing redirect_url', authorizeUrl({ sub: 'oauth', client_id: CLIENT_ID })],
    ['relative redirect_url', authorizeUrl({ ...valid, redirect_url: '/oauth/callback' })],
    ['javascript redirect_url', authorizeUrl({ ...valid, redirect_url: 'javascript:alert(1)' })],
    ['unregistered redirect_url', authorizeUrl({ ...valid, redirect_url: 'https://evil.example/oauth/callback' })],
    ['redirect_url with a different path', authorizeUrl({ ...valid, redirect_url: REDIRECT + '/' })],
    ['repeated client_id', authorizeUrl(valid) + `&client_id=${CLIENT_ID}`],
    ['overlong state', authorizeUrl({ ...valid, state: 'x'.repeat(2049) })]
  ]
  for (const [name, url] of cases) {
    const res = await sim.app.inject({ url })
    t.equal(res.statusCode, 400, name)
    t.match(res.headers['content-type'], /^text\/html/, name)
    t.notMatch(res.body, 'Allow', name)
  }
  t.equal((await sim.app.inject({ url: authorizeUrl(valid) })).statusCode, 200, 'the registered redirect URL passes')
})

t.test('any absolute http(s) redirect URL is accepted when none is registered', async t => {
  const sim = build(t)
  t.equal((await sim.app.inject({ url: authorizeUrl({ ...valid, redirect_url: 'http://127.0.0.1:3000/oauth/callback' }) })).statusCode, 200)
  t.equal((await sim.app.inject({ url: authorizeUrl({ ...valid, redirect_url: 'ftp://example.com/x' }) })).statusCode, 400)
})

t.test('echoed values are HTML-escaped', async t => {
  const sim = build(t)
  const state = '"><script>alert(1)</script>&\''
  const redirect = 'https://partner.example/cb?a="<b>'
  const res = await sim.app.inject({ url: authorizeUrl({ ...valid, state, redirect_url: redirect }) })
  t.equal(res.statusCode, 200)
  t.notMatch(res.body, '<script>')
  t.notMatch(res.body, '"<b>')
  t.match(res.body, 'value="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&amp;&#39;"')
  t.match(res.body, 'value="https://partner.example/cb?a=&quot;&lt;b&gt;"')
})

t.test('Allow redirects with code and state, Deny with no parameters', async t => {
  const sim = build(t)
  const form = { client_id: CLIENT_ID, redirect_url: REDIRECT, state: 'a b&c=d', merchant_id: 'm_1' }

  const allow = await decide(sim, { ...form, decision: 'allow' })
  t.equal(allow.statusCode, 302)
  const loc = new URL(String(allow.headers.location))
  t.equal(loc.origin + loc.pathname, REDIRECT)
  t.same([...loc.searchParams.keys()], ['code', 'state'])
  t.equal(loc.searchParams.get('state'), 'a b&c=d')
  const code = loc.searchParams.get('code') ?? ''
  t.match(code, /^[A-Za-z0-9_-]{20,}$/)
  const { res, body } = await exchange(sim, code)
  t.equal(res.statusCode, 200)
  t.equal(decodeJwtPayload(String(body.access_token))?.merchant_id, 'm_1', 'the code is bound to the merchant typed in')

  const deny = await decide(sim, { ...form, decision: 'deny' })
  t.equal(deny.statusCode, 302)
  t.equal(deny.headers.location, REDIRECT, 'no parameters at all, not even state')

  const noState = await decide(sim, { client_id: CLIENT_ID, redirect_url: REDIRECT, merchant_id: 'm_1', decision: 'allow' })
  t.same([...new URL(String(noState.headers.location)).searchParams.keys()], ['code'], 'state only when one was sent')

  const withQuery = await decide(sim, { ...form, redirect_url: 'https://partner.example/cb?tenant=7', decision: 'allow' })
  const q = new URL(String(withQuery.headers.location)).searchParams
  t.equal(q.get('tenant'), '7', 'an existing query string is kept')
  t.ok(q.has('code'))
  t.equal((await decide(sim, { ...form, redirect_url: 'https://partner.example/cb?tenant=7', decision: 'deny' })).headers.location,
    'https://partner.example/cb?tenant=7')
})

t.test('the decision is validated again', async t => {
  const sim = build(t, { redirectUrl: REDIRECT })
  const form = { client_id: CLIENT_ID, redirect_url: REDIRECT, state: 's', merchant_id: 'm_1', decision: 'allow' }
  t.equal((await decide(sim, { ...form, client_id: 'other' })).statusCode, 400)
  t.equal((await decide(sim, { ...form, redirect_url: 'https://evil.example/cb' })).statusCode, 400)
  t.equal((await decide(sim, { ...form, merchant_id: 'bad id!' })).statusCode, 400)
  t.equal((await decide(sim, { ...form, merchant_id: '' })).statusCode, 400)
  t.equal((await decide(sim, { ...form, merchant_id: 'x'.repeat(65) })).statusCode, 400)
  t.equal((await decide(sim, { ...form, decision: 'maybe' })).statusCode, 400)
  t.equal((await decide(sim, { ...form, merchant_id: 'bad id!', decision: 'deny' })).statusCode, 302, 'deny needs no merchant id')
  t.equal((await decide(sim, form)).statusCode, 302)
})

t.test('code exchange: response shape and tokens', async t => {
  const sim = build(t, { scopes: ['payments', 'transactions'], accessTokenTtlSeconds: 120, refreshTokenTtlSeconds: 3600 })
  const code = sim.control.issueCode('merchant_A')
  const { res, body } = await token(sim, { client_id: CLIENT_ID, client_secret: CLIENT_SECRET, grant_type: 'authorization_code', code },
    { 'v-c-client-correlation-id': 'corr-1' })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^application\/json/)
  t.equal(res.headers['cache-control'], 'no-store')
  t.equal(res.headers.pragma, 'no-cache')
  t.equal(res.headers['v-c-client-correlation-id'], 'corr-1')
  t.match(body, {
    access_token: String,
    token_type: 'Bearer',
    refresh_token: String,
    expires_in: 120,
    scope: 'payments transactions',
    refresh_token_expires_in: 3600,
    client_status: 'active'
  })
  const [header] = String(body.access_token).split('.')
  t.same(JSON.parse(Buffer.from(header, 'base64url').toString()), { kid: 'simulator', alg: 'RS256' })
  const access = decodeJwtPayload(String(body.access_token))
  t.match(access, { jti: String, iat: sim.clock.ms, client_id: CLIENT_ID, merchant_id: 'merchant_A', scopes: ['payments', 'transactions'], token_type: 'access_token' })
  t.notOk('pad' in (access ?? {}))
  t.match(decodeJwtPayload(String(body.refresh_token)), { merchant_id: 'merchant_A', token_type: 'refresh_token' })
  t.not(body.access_token, body.refresh_token)
  t.same(sim.control.stats(), { exchanges: 1, refreshes: 0, failures: 0 })
})

t.test('tokenPadBytes makes realistic token sizes', async t => {
  const sim = build(t, { tokenPadBytes: 900 })
  const { body } = await exchange(sim, sim.control.issueCode('m1'))
  t.ok(String(body.access_token).length > 1500, `access token is ${String(body.access_token).length} characters`)
  t.equal(decodeJwtPayload(String(body.access_token))?.pad, 'x'.repeat(900))
})

t.test('a code is single use', async t => {
  const sim = build(t)
  const code = sim.control.issueCode('m1')
  t.equal((await exchange(sim, code)).res.statusCode, 200)
  const again = await exchange(sim, code)
  t.equal(again.res.statusCode, 500)
  t.same(Object.keys(again.body), ['error', 'error_description'])
  t.match(again.body, { error: 'invalid_grant', error_description: String })
  t.equal(again.res.headers['cache-control'], 'no-store')
  t.same(sim.control.stats(), { exchanges: 1, refreshes: 0, failures: 1 })
})

t.test('a code that was rejected once stays used', async t => {
  const sim = build(t)
  const code = sim.control.issueCode('m1')
  const wrong = await token(sim, { client_id: CLIENT_ID, client_secret: 'nope', grant_type: 'authorization_code', code })
  t.equal(wrong.body.error, 'invalid_client', 'client authentication is checked before the code')
  t.equal((await exchange(sim, code)).res.statusCode, 200, 'a failed client check does not burn the code')
  t.equal((await exchange(sim, 'unknown-code')).body.error, 'invalid_grant')
})

t.test('codes expire after codeTtlSeconds', async t => {
  const sim = build(t, { codeTtlSeconds: 60 })
  const early = sim.control.issueCode('m1')
  const late = sim.control.issueCode('m1')
  sim.clock.ms += 59_000
  t.equal((await exchange(sim, early)).res.statusCode, 200)
  sim.clock.ms += 1_000
  t.equal((await exchange(sim, late)).body.error, 'invalid_grant')
})

t.test('codes live 10 minutes by default', async t => {
  const sim = build(t)
  const code = sim.control.issueCode('m1')
  const expired = sim.control.issueCode('m1')
  sim.clock.ms += 599_000
  t.equal((await exchange(sim, code)).res.statusCode, 200)
  sim.clock.ms += 1_000
  t.equal((await exchange(sim, expired)).body.error, 'invalid_grant')
})

t.test('refresh: new access token, same refresh token, expiry reset', async t => {
  const sim = build(t, { refreshTokenTtlSeconds: 100 })
  const first = await exchange(sim, sim.control.issueCode('m9'))
  const rt = String(first.body.refresh_token)

  sim.clock.ms += 90_000
  const r1 = await refresh(sim, rt)
  t.equal(r1.res.statusCode, 200)
  t.equal(r1.body.refresh_token, rt)
  t.not(r1.body.access_token, first.body.access_token)
  t.equal(r1.body.refresh_token_expires_in, 100)
  t.equal(decodeJwtPayload(String(r1.body.access_token))?.merchant_id, 'm9')

  sim.clock.ms += 90_000 // 180 s after issue, 90 s after the reset
  t.equal((await refresh(sim, rt)).res.statusCode, 200, 'the expiry was reset by the previous refresh')
  sim.clock.ms += 100_000
  const expired = await refresh(sim, rt)
  t.equal(expired.res.statusCode, 500, 'OAuth errors are answered with 500, as CyberSource documents')
  t.equal(expired.body.error, 'invalid_grant')
  t.same(sim.control.stats(), { exchanges: 1, refreshes: 2, failures: 1 })
})

t.test('refresh with rotation invalidates the old token', async t => {
  const sim = build(t, { rotateRefreshTokens: true })
  const first = await exchange(sim, sim.control.issueCode('m1'))
  const rt = String(first.body.refresh_token)
  const r1 = await refresh(sim, rt)
  t.equal(r1.res.statusCode, 200)
  t.not(r1.body.refresh_token, rt)
  t.equal((await refresh(sim, rt)).body.error, 'invalid_grant')
  t.equal((await refresh(sim, String(r1.body.refresh_token))).res.statusCode, 200)
})

t.test('revokeRefreshTokens', async t => {
  const sim = build(t)
  const a = String((await exchange(sim, sim.control.issueCode('m1'))).body.refresh_token)
  const b = String((await exchange(sim, sim.control.issueCode('m1'))).body.refresh_token)
  const other = String((await exchange(sim, sim.control.issueCode('m2'))).body.refresh_token)
  t.equal(sim.control.revokeRefreshTokens('m1'), 2)
  t.equal((await refresh(sim, a)).body.error, 'invalid_grant')
  t.equal((await refresh(sim, b)).body.error, 'invalid_grant')
  t.equal((await refresh(sim, other)).res.statusCode, 200)
  t.equal(sim.control.revokeRefreshTokens('m1'), 0)
})

t.test('client authentication and request validation', async t => {
  const sim = build(t)
  const code = sim.control.issueCode('m1')
  const base = { client_id: CLIENT_ID, client_secret: CLIENT_SECRET }
  const cases: Array<[string, Record<string, string>, string]> = [
    ['wrong secret', { ...base, client_secret: 'wrong', grant_type: 'authorization_code', code }, 'invalid_client'],
    ['wrong client id', { ...base, client_id: 'other', grant_type: 'authorization_code', code }, 'invalid_client'],
    ['missing secret', { client_id: CLIENT_ID, grant_type: 'authorization_code', code }, 'invalid_request'],
    ['missing grant_type', { ...base, code }, 'invalid_request'],
    ['unsupported grant', { ...base, grant_type: 'client_credentials' }, 'unsupported_grant_type'],
    ['missing code', { ...base, grant_type: 'authorization_code' }, 'invalid_request'],
    ['missing refresh token', { ...base, grant_type: 'refresh_token' }, 'invalid_request'],
    ['unknown refresh token', { ...base, grant_type: 'refresh_token', refresh_token: 'nope' }, 'invalid_grant']
  ]
  for (const [name, fields, error] of cases) {
    const { res, body } = await token(sim, fields)
    t.equal(res.statusCode, 500, name)
    t.same(Object.keys(body), ['error', 'error_description'], name)
    t.match(body, { error, error_description: String }, name)
  }
  const repeated = await sim.app.inject({ method: 'POST', url: TOKEN_PATH, headers: FORM, payload: `client_id=${CLIENT_ID}&client_id=${CLIENT_ID}&client_secret=${CLIENT_SECRET}&grant_type=authorization_code&code=${code}` })
  t.equal(repeated.json().error, 'invalid_request', 'a repeated field')
  const asJson = await sim.app.inject({ method: 'POST', url: TOKEN_PATH, payload: { ...base, grant_type: 'authorization_code', code } })
  t.equal(asJson.json().error, 'invalid_request', 'a JSON body is not a form')
  const asText = await sim.app.inject({ method: 'POST', url: TOKEN_PATH, headers: { 'content-type': 'text/plain' }, payload: 'hello' })
  t.equal(asText.json().error, 'invalid_request', 'a text body is not a form')
  t.equal((await exchange(sim, code)).res.statusCode, 200, 'none of that consumed the code')
  t.same(sim.control.stats(), { exchanges: 1, refreshes: 0, failures: 11 })
})

t.test('oauthErrorStatus: 400 keeps the RFC 6749 status for every OAuth error', async t => {
  const sim = build(t, { oauthErrorStatus: 400 })
  const base = { client_id: CLIENT_ID, client_secret: CLIENT_SECRET }
  const cases: Array<[string, Record<string, string>, string]> = [
    ['wrong secret', { ...base, client_secret: 'wrong', grant_type: 'authorization_code', code: 'x' }, 'invalid_client'],
    ['missing grant_type', base, 'invalid_request'],
    ['unsupported grant', { ...base, grant_type: 'client_credentials' }, 'unsupported_grant_type'],
    ['unknown code', { ...base, grant_type: 'authorization_code', code: 'nope' }, 'invalid_grant']
  ]
  for (const [name, fields, error] of cases) {
    const { res, body } = await token(sim, fields)
    t.equal(res.statusCode, 400, name)
    t.equal(body.error, error, name)
  }
  sim.control.setBehavior({ fault: 'invalid_grant' })
  t.equal((await exchange(sim, sim.control.issueCode('m1'))).res.statusCode, 400, 'the invalid_grant fault too')
  sim.control.setBehavior({ fault: 'error_500_oauth' })
  t.equal((await exchange(sim, sim.control.issueCode('m1'))).res.statusCode, 500, 'server_error stays a 500')
})

async function admin (sim: Simulator, url: string, payload?: unknown) {
  return await sim.app.inject({ method: payload === undefined ? 'GET' : 'POST', url, ...(payload === undefined ? {} : { payload: payload as object }) })
}

t.test('faults set through the admin API', async t => {
  const sim = build(t)
  const expectations: Record<string, (r: Awaited<ReturnType<typeof token>>) => void> = {
    invalid_grant: ({ res, body }) => { t.equal(res.statusCode, 500); t.equal(body.error, 'invalid_grant') },
    invalid_client: ({ res, body }) => { t.equal(res.statusCode, 500); t.equal(body.error, 'invalid_client') },
    error_500_oauth: ({ res, body }) => { t.equal(res.statusCode, 500); t.equal(body.error, 'server_error') },
    error_500_empty: ({ res }) => { t.equal(res.statusCode, 500); t.equal(res.body, '') },
    error_502_html: ({ res }) => { t.equal(res.statusCode, 502); t.match(res.headers['content-type'], /^text\/html/); t.match(res.body, 'Bad Gateway') },
    garbage: ({ res }) => {
      t.equal(res.statusCode, 200)
      t.throws(() => JSON.parse(res.body))
    },
    no_access_token: ({ res, body }) => { t.equal(res.statusCode, 200); t.notOk('access_token' in body); t.equal(body.token_type, 'Bearer') },
    not_jwt: ({ res, body }) => {
      t.equal(res.statusCode, 200)
      t.type(body.access_token, 'string')
      t.equal(decodeJwtPayload(String(body.access_token)), undefined)
    },
    no_merchant_id: ({ res, body }) => {
      t.equal(res.statusCode, 200)
      const claims = decodeJwtPayload(String(body.access_token))
      t.ok(claims !== undefined && !('merchant_id' in claims) && claims.client_id === CLIENT_ID)
      t.notOk('merchant_id' in (decodeJwtPayload(String(body.refresh_token)) ?? {}))
    }
  }
  for (const [fault, check] of Object.entries(expectations)) {
    const set = await admin(sim, '/__sim/behavior', { fault })
    t.equal(set.statusCode, 200, fault)
    t.same(set.json(), { fault }, fault)
    check(await exchange(sim, sim.control.issueCode('m1')))
  }
  t.same(sim.control.stats(), { exchanges: 1, refreshes: 0, failures: 8 }, 'no_merchant_id still issues tokens')

  t.equal((await admin(sim, '/__sim/behavior', { fault: 'none' })).statusCode, 200)
  const code = sim.control.issueCode('m1')
  await admin(sim, '/__sim/behavior', { fault: 'invalid_grant' })
  t.equal((await exchange(sim, code)).body.error, 'invalid_grant')
  await admin(sim, '/__sim/reset', {})
  t.equal((await exchange(sim, code)).res.statusCode, 200, 'a fault does not consume the code')
  t.same(await (await admin(sim, '/__sim/behavior')).json(), {})
})

t.test('admin API validates behaviors', async t => {
  const sim = build(t)
  t.equal((await admin(sim, '/__sim/behavior', { fault: 'explode' })).statusCode, 400)
  t.equal((await admin(sim, '/__sim/behavior', { delayMs: -1 })).statusCode, 400)
  t.equal((await admin(sim, '/__sim/behavior', { times: 0 })).statusCode, 400)
  t.equal((await admin(sim, '/__sim/behavior', { grantType: 'password' })).statusCode, 400)
  t.same(sim.control.behavior(), {})
})

t.test('times and grantType limit a fault', async t => {
  const sim = build(t, { behavior: { fault: 'error_500_empty', times: 2, grantType: 'refresh_token' } })
  const first = await exchange(sim, sim.control.issueCode('m1'))
  t.equal(first.res.statusCode, 200, 'a code exchange is not affected')
  const rt = String(first.body.refresh_token)
  t.equal((await refresh(sim, rt)).res.statusCode, 500)
  t.equal((await refresh(sim, rt)).res.statusCode, 500)
  t.equal((await refresh(sim, rt)).res.statusCode, 200, 'the fault applied twice only')
  t.same(sim.control.stats(), { exchanges: 1, refreshes: 1, failures: 2 })

  sim.control.setBehavior({ fault: 'invalid_client', times: 1 })
  t.equal((await refresh(sim, rt)).body.error, 'invalid_client')
  t.equal((await refresh(sim, rt)).res.statusCode, 200)
})

t.test('delayMs delays the answer', async t => {
  const sim = build(t, { now: Date.now })
  const code = sim.control.issueCode('m1')
  sim.control.setBehavior({ delayMs: 200 })
  const started = performance.now()
  const { res } = await exchange(sim, code)
  t.equal(res.statusCode, 200)
  t.ok(performance.now() - started >= 190, 'answered after the delay')
})

t.test('drop destroys the connection; a delay longer than the client waits is survived', async t => {
  const sim = build(t, { now: Date.now })
  await sim.app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = sim.app.server.address() as { port: number }
  const body = new URLSearchParams({ client_id: CLIENT_ID, client_secret: CLIENT_SECRET, grant_type: 'authorization_code', code: sim.control.issueCode('m1') }).toString()
  const post = async (signal?: AbortSignal) => await request(`http://127.0.0.1:${port}${TOKEN_PATH}`, { method: 'POST', headers: FORM, body, signal })

  sim.control.setBehavior({ fault: 'drop', times: 1 })
  await t.rejects(post(), { code: 'UND_ERR_SOCKET' })

  sim.control.setBehavior({ delayMs: 5_000, times: 1 })
  await t.rejects(post(AbortSignal.timeout(100)))
  const ok = await post()
  t.equal(ok.statusCode, 200, 'the code was not consumed by either')
  await ok.body.dump()
  t.equal(sim.control.requests().length, 3)
  t.same(sim.control.stats(), { exchanges: 1, refreshes: 0, failures: 2 })
})

t.test('recorded requests and stats', async t => {
  const sim = build(t)
  const { body } = await token(sim, { client_id: CLIENT_ID, client_secret: CLIENT_SECRET, grant_type: 'authorization_code', code: sim.control.issueCode('m1') },
    { 'v-c-client-correlation-id': 'corr-42', accept: 'application/json' })
  await refresh(sim, String(body.refresh_token))
  await sim.app.inject({ url: authorizeUrl(valid) })

  const res = await admin(sim, '/__sim/requests')
  t.equal(res.statusCode, 200)
  const records = res.json()
  t.equal(records.length, 2, 'only token requests are recorded')
  t.match(records[0], {
    method: 'POST',
    path: TOKEN_PATH,
    url: TOKEN_PATH,
    headers: { 'content-type': 'application/x-www-form-urlencoded', 'v-c-client-correlation-id': 'corr-42', accept: 'application/json' },
    form: { client_id: CLIENT_ID, client_secret: CLIENT_SECRET, grant_type: 'authorization_code', code: String },
    clientCertificate: { presented: false, subjectCN: null },
    receivedAt: sim.clock.ms
  })
  t.match(records[1].form, { grant_type: 'refresh_token', refresh_token: body.refresh_token })
  t.same(sim.control.requests(), records)
  t.same((await admin(sim, '/__sim/stats')).json(), { exchanges: 1, refreshes: 1, failures: 0 })

  sim.control.setBehavior({ fault: 'garbage' })
  t.equal((await admin(sim, '/__sim/reset', {})).statusCode, 204)
  t.same(sim.control.requests(), [])
  t.same(sim.control.stats(), { exchanges: 0, refreshes: 0, failures: 0 })
  t.same(sim.control.behavior(), {})
  t.equal((await refresh(sim, String(body.refresh_token))).res.statusCode, 200, 'issued tokens survive a reset')
})

t.test('records are bounded', async t => {
  const sim = build(t, { maxRecords: 3 })
  for (let i = 0; i < 5; i++) await token(sim, { client_id: CLIENT_ID, grant_type: String(i) })
  t.same(sim.control.requests().map(r => r.form.grant_type), ['2', '3', '4'])
})

t.test('admin codes and revoke endpoints', async t => {
  const sim = build(t)
  const issued = await admin(sim, '/__sim/codes', { merchant_id: 'm_77' })
  t.equal(issued.statusCode, 201)
  t.match(issued.json(), { code: String, expires_in: 600 })
  const { body } = await exchange(sim, issued.json().code)
  t.equal(decodeJwtPayload(String(body.access_token))?.merchant_id, 'm_77')
  t.equal((await admin(sim, '/__sim/codes', { merchant_id: 'bad id' })).statusCode, 400)
  t.same((await admin(sim, '/__sim/revoke', { merchant_id: 'm_77' })).json(), { revoked: 1 })
  t.equal((await refresh(sim, String(body.refresh_token))).body.error, 'invalid_grant')
  t.throws(() => sim.control.issueCode('bad id'))
})

t.test('the admin API can be switched off', async t => {
  const sim = build(t, { adminApi: false })
  t.equal((await admin(sim, '/__sim/stats')).statusCode, 404)
  t.equal((await admin(sim, '/__sim/behavior', { fault: 'drop' })).statusCode, 404)
})

t.test('huge answers 200 with a 10 MB body that looks like JSON; no grant is used', async t => {
  const sim = build(t)
  const code = sim.control.issueCode('m1')
  sim.control.setBehavior({ fault: 'huge', times: 2 })
  const { res } = await exchange(sim, code)
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^application\/json/)
  t.equal(res.rawPayload.length, HUGE_BODY_BYTES)
  t.ok(res.body.startsWith('{"access_token":"'), 'starts like a token answer')
  t.ok(res.body.endsWith('"}'), 'and ends like one')
  t.equal((await exchange(sim, code)).res.rawPayload.length, HUGE_BODY_BYTES, 'every time')
  t.equal((await exchange(sim, code)).res.statusCode, 200, 'the code was not consumed')
  t.same(sim.control.stats(), { exchanges: 1, refreshes: 0, failures: 2 })
})

t.test('wrong_merchant answers well-formed tokens of another merchant; no grant is used or issued', async t => {
  const sim = build(t, { rotateRefreshTokens: true })
  const { body } = await exchange(sim, sim.control.issueCode('m1'))
  const rt = String(body.refresh_token)

  sim.control.setBehavior({ fault: 'wrong_merchant', grantType: 'refresh_token', times: 1 })
  const deflt = await refresh(sim, rt)
  t.equal(deflt.res.statusCode, 200)
  t.equal(decodeJwtPayload(String(deflt.body.access_token))?.merchant_id, 'other_merchant')
  t.equal(decodeJwtPayload(String(deflt.body.refresh_token))?.merchant_id, 'other_merchant')
  t.match(deflt.body, { token_type: 'Bearer', expires_in: Number, scope: String, refresh_token_expires_in: Number })

  sim.control.setBehavior({ fault: 'wrong_merchant', merchantId: 'm2', grantType: 'refresh_token', times: 1 })
  const named = await refresh(sim, rt)
  t.equal(decodeJwtPayload(String(named.body.access_token))?.merchant_id, 'm2')
  t.equal((await refresh(sim, String(named.body.refresh_token))).body.error, 'invalid_grant', 'its refresh token is not a real grant')

  const real = await refresh(sim, rt)
  t.equal(real.res.statusCode, 200, 'the merchant\'s own refresh token still works (it was not rotated)')
  t.equal(decodeJwtPayload(String(real.body.access_token))?.merchant_id, 'm1')
  t.same(sim.control.stats(), { exchanges: 1, refreshes: 1, failures: 3 })
})

t.test('failureRate applies the behavior to a share of the matching requests', async t => {
  const draws: number[] = []
  const sim = build(t, { random: () => draws.shift() ?? 0 })
  const { body } = await exchange(sim, sim.control.issueCode('m1'))
  const rt = String(body.refresh_token)

  sim.control.setBehavior({ fault: 'error_500_empty', failureRate: 0.25, times: 2, grantType: 'refresh_token' })
  const statuses: number[] = []
  draws.push(0.9, 0.1, 0.25, 0.2, 0.0)
  for (let i = 0; i < 5; i++) statuses.push((await refresh(sim, rt)).res.statusCode)
  // 0.9 and 0.25 are not below the rate: normal answers that do not use up `times`.
  t.same(statuses, [200, 500, 200, 500, 200])
  t.equal(draws.length, 1, 'once times is used up, no number is drawn')

  sim.control.setBehavior({ fault: 'error_500_empty', failureRate: 0.25, grantType: 'refresh_token' })
  draws.length = 0
  draws.push(0)
  t.equal((await exchange(sim, sim.control.issueCode('m1'))).res.statusCode, 200, 'other grants are not drawn for')
  t.equal(draws.length, 1)

  sim.control.setBehavior({ fault: 'drop', failureRate: 0 })
  draws.length = 0
  for (let i = 0; i < 3; i++) t.equal((await refresh(sim, rt)).res.statusCode, 200, 'rate 0: never')
  sim.control.setBehavior({ fault: 'error_502_html', failureRate: 1 })
  draws.push(0.999999)
  t.equal((await refresh(sim, rt)).res.statusCode, 502, 'rate 1: always')
  t.same(sim.control.stats(), { exchanges: 2, refreshes: 6, failures: 3 })
})

t.test('failureRate spreads faults over requests with Math.random by default', async t => {
  const sim = build(t)
  const { body } = await exchange(sim, sim.control.issueCode('m1'))
  sim.control.setBehavior({ fault: 'error_500_empty', failureRate: 0.5 })
  let failed = 0
  for (let i = 0; i < 200; i++) if ((await refresh(sim, String(body.refresh_token))).res.statusCode === 500) failed++
  // Binomial(200, 0.5): outside 50-150 with a probability below 1e-12.
  t.ok(failed > 50 && failed < 150, `about half failed (${failed} of 200)`)
})

t.test('admin API takes failureRate and merchantId, and validates them', async t => {
  const sim = build(t)
  const set = await admin(sim, '/__sim/behavior', { fault: 'wrong_merchant', merchantId: 'm_9', failureRate: 0.1 })
  t.equal(set.statusCode, 200)
  t.same(set.json(), { fault: 'wrong_merchant', merchantId: 'm_9', failureRate: 0.1 })
  t.equal((await admin(sim, '/__sim/behavior', { failureRate: 1.5 })).statusCode, 400)
  t.equal((await admin(sim, '/__sim/behavior', { failureRate: -0.1 })).statusCode, 400)
  t.equal((await admin(sim, '/__sim/behavior', { merchantId: 'bad id' })).statusCode, 400)
  t.same(sim.control.behavior(), { fault: 'wrong_merchant', merchantId: 'm_9', failureRate: 0.1 })
})
