// Browser binding of onboarding states: the account-linking forgery (an attacker's code and state
// in a victim's browser) is refused before any exchange, the browser that started an onboarding
// can reload its callback, and every other browser gets 401. A private Redis and the simulator.
import t from 'tap'
import { build, callback, connect, cookiesOf, type Built } from '../helper.js'
import { TOKEN_PATH } from '../../src/simulator/app.js'
import { BINDING_COOKIE } from '../../routes/oauth/index.js'

const exchanges = (b: Built): number =>
  b.sim.control.requests().filter(r => r.path === TOKEN_PATH && r.form.grant_type === 'authorization_code').length
const referenceOf = (body: string): string | undefined => /[0-9A-Z]{4}-[0-9A-Z]{4}/.exec(body)?.[0]
const metric = async (b: Built, line: RegExp): Promise<string | undefined> => {
  const res = await b.app.inject({ url: '/metrics' })
  return res.body.split('\n').find(l => line.test(l))
}

t.test('the CSRF scenario: an attacker\'s code and state in a victim\'s browser → 403, no exchange, state kept for its owner', async t => {
  const b = await build(t)
  const attacker = await connect(b)
  const code = b.sim.control.issueCode('attacker_m')
  const victim = await connect(b) // the victim has a binding cookie of its own

  for (const [who, cookie] of [['a victim with its own cookie', victim.cookie], ['a victim without any cookie', undefined]] as const) {
    const res = await callback(b, { code, state: attacker.state }, cookie)
    t.equal(res.statusCode, 403, `${who}: 403`)
    t.match(res.body, /browser/i, `${who}: the page says why`)
    t.notOk(res.body.includes('attacker_m'), `${who}: the page does not name the attacker's merchant`)
  }
  t.equal(exchanges(b), 0, 'the code was never exchanged')
  t.equal(await b.app.tokenStore.get('attacker_m'), undefined, 'nothing stored')
  t.match(await metric(b, /^cybs_onboarding_browser_mismatch_total\{enforced="true"\}/), / 2$/, 'counted')
  const lines = b.logs.lines().filter(l => l.msg === 'onboarding callback' && l.outcome === 'browser_mismatch')
  t.equal(lines.length, 2, 'one log line per refused callback')

  const own = await callback(b, { code, state: attacker.state }, attacker.cookie)
  t.equal(own.statusCode, 200, 'the state was not spent: its own browser still completes')
  t.equal(exchanges(b), 1)
})

t.test('a browser mismatch with ONBOARDING_FAILURE_URL redirects with reason=browser_mismatch', async t => {
  const b = await build(t, { env: { ONBOARDING_FAILURE_URL: 'https://portal.example/failed' } })
  const started = await connect(b)
  const res = await callback(b, { code: b.sim.control.issueCode('m_1'), state: started.state })
  t.equal(res.statusCode, 302)
  const location = new URL(String(res.headers.location))
  t.equal(location.searchParams.get('reason'), 'browser_mismatch')
  t.notOk(location.searchParams.has('onboarding_id'))
  t.equal(exchanges(b), 0)
})

t.test('reload by the binding browser: the same page, nothing exchanged twice; other browsers → 401', async t => {
  const b = await build(t)
  const started = await connect(b)
  const params = { code: b.sim.control.issueCode('reload_m'), state: started.state }
  const first = await callback(b, params, started.cookie)
  t.equal(first.statusCode, 200)
  const reference = referenceOf(first.body)
  t.ok(reference, 'the page shows a short reference')

  const again = await callback(b, params, started.cookie)
  t.equal(again.statusCode, 200, 'reload: 200 again')
  t.equal(referenceOf(again.body), reference, 'reload: the same reference')
  t.match(again.body, /reload_m/, 'reload: the same success page')
  t.equal(exchanges(b), 1, 'one exchange')

  const other = await connect(b)
  t.equal((await callback(b, params, other.cookie)).statusCode, 401, 'another browser: 401')
  t.equal((await callback(b, params)).statusCode, 401, 'no cookie: 401')
  const replays = b.logs.lines().filter(l => l.msg === 'onboarding callback' && l.replayed === true)
  t.equal(replays.length, 1, 'the reload is logged as a replay')
})

t.test('reload after a failure and with ONBOARDING_SUCCESS_URL: the same redirect', async t => {
  const b = await build(t, { env: { ONBOARDING_SUCCESS_URL: 'https://portal.example/ok', ONBOARDING_FAILURE_URL: 'https://portal.example/failed' } })
  const ok = await connect(b)
  const okParams = { code: b.sim.control.issueCode('redir_m'), state: ok.state }
  const first = await callback(b, okParams, ok.cookie)
  const second = await callback(b, okParams, ok.cookie)
  t.equal(first.statusCode, 302)
  t.equal(second.headers.location, first.headers.location, 'the same success redirect')

  const denied = await connect(b)
  const d1 = await callback(b, { state: denied.state }, denied.cookie)
  const d2 = await callback(b, { state: denied.state }, denied.cookie)
  t.match(String(d1.headers.location), /reason=access_denied/)
  t.equal(d2.headers.location, d1.headers.location, 'the same failure redirect')
  t.equal(exchanges(b), 1)
})

t.test('concurrent callbacks of one browser: one exchange, both answered with the outcome', async t => {
  const b = await build(t)
  const started = await connect(b)
  const params = { code: b.sim.control.issueCode('race_m'), state: started.state }
  const answers = await Promise.all(Array.from({ length: 5 }, async () => await callback(b, params, started.cookie)))
  t.same(answers.map(a => a.statusCode), [200, 200, 200, 200, 200])
  t.equal(new Set(answers.map(a => referenceOf(a.body))).size, 1, 'one reference')
  t.equal(exchanges(b), 1)
})

t.test('the binding cookie: HttpOnly, SameSite=Lax, path under PUBLIC_BASE_URL, Secure on https only; reused across tabs', async t => {
  const b = await build(t)
  const res = await b.app.inject({ url: '/oauth/connect' })
  const set = String(res.headers['set-cookie'])
  t.match(set, new RegExp(`^${BINDING_COOKIE}=[A-Za-z0-9_-]{43};`))
  t.match(set, /HttpOnly/)
  t.match(set, /SameSite=Lax/)
  t.match(set, /Path=\/oauth(;|$)/)
  t.notMatch(set, /Secure/, 'http PUBLIC_BASE_URL: no Secure (development)')

  const tab1 = await connect(b)
  const tab2 = await connect(b, '', tab1.cookie)
  t.equal(tab2.cookie, tab1.cookie, 'the second tab keeps the browser\'s value')
  t.equal((await callback(b, { code: b.sim.control.issueCode('tab_1'), state: tab1.state }, tab1.cookie)).statusCode, 200)
  t.equal((await callback(b, { code: b.sim.control.issueCode('tab_2'), state: tab2.state }, tab1.cookie)).statusCode, 200)
  const forged = await b.app.inject({ url: '/oauth/connect', headers: { cookie: `${BINDING_COOKIE}=short` } })
  t.not(cookiesOf(forged.headers), `${BINDING_COOKIE}=short`, 'a malformed value is replaced')

  const secure = await build(t, { env: { PUBLIC_BASE_URL: 'https://partner.example/broker/' } })
  const s = String((await secure.app.inject({ url: '/oauth/connect' })).headers['set-cookie'])
  t.match(s, /Secure/)
  t.match(s, /Path=\/broker\/oauth(;|$)/)

  // https without a path prefix: __Host- (Path=/, no Domain), so a sibling subdomain cannot plant one.
  const host = await build(t, { env: { PUBLIC_BASE_URL: 'https://partner.example' } })
  const first = await host.app.inject({ url: '/oauth/connect' })
  const h = String(first.headers['set-cookie'])
  t.match(h, new RegExp(`^__Host-${BINDING_COOKIE}=[A-Za-z0-9_-]{43};`))
  t.match(h, /Path=\/(;|$)/)
  t.match(h, /Secure/)
  t.notMatch(h, /Domain=/)
  const state = new URL(String(first.headers.location)).searchParams.get('state') ?? ''
  const done = await callback(host, { code: host.sim.control.issueCode('host_m'), state }, cookiesOf(first.headers))
  t.equal(done.statusCode, 200, 'the callback reads the __Host- cookie')
  const planted = await callback(host, { code: host.sim.control.issueCode('host_m'), state }, `${BINDING_COOKIE}=${cookiesOf(first.headers).split('=')[1]}`)
  t.equal(planted.statusCode, 401, 'a cookie without the prefix binds nothing')
})

t.test('a CYBS_REDIRECT_URL outside PUBLIC_BASE_URL/oauth/ is warned about at start-up', async t => {
  const b = await build(t, { env: { CYBS_REDIRECT_URL: 'https://elsewhere.example/callback' } })
  t.ok(b.logs.lines().some(l => l.level === 40 && /CYBS_REDIRECT_URL/.test(String(l.msg))))
  const fine = await build(t)
  t.notOk(fine.logs.lines().some(l => /CYBS_REDIRECT_URL/.test(String(l.msg))), 'not when it is the derived one')
})

t.test('ONBOARDING_BROWSER_BINDING=off: any browser completes; mismatches are still counted; warned at start', async t => {
  const b = await build(t, { env: { ONBOARDING_BROWSER_BINDING: 'off' } })
  t.ok(b.logs.lines().some(l => l.level === 40 && /ONBOARDING_BROWSER_BINDING=off/.test(String(l.msg))), 'a start-up warning')
  t.match(await metric(b, /^cybs_onboarding_browser_binding_disabled /), / 1$/)
  const started = await connect(b)
  const res = await callback(b, { code: b.sim.control.issueCode('relay_m'), state: started.state })
  t.equal(res.statusCode, 200, 'a server-side relay without the cookie completes')
  t.equal((await b.app.tokenStore.get('relay_m'))?.status, 'connected')
  t.match(await metric(b, /^cybs_onboarding_browser_mismatch_total\{enforced="false"\}/), / 1$/)
})
