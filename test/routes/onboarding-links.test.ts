// Onboarding links as resources: POST /internal/v1/onboarding-links, the link's URL (each visit a
// fresh state bound to that browser), the portal's flow with `reference` and `onboarding_id`, and
// GET /internal/v1/onboarding-links/:id. A private Redis and the simulator over real HTTP.
import t from 'tap'
import { build, callback, cookiesOf, type Built } from '../helper.js'
import { scanKeys } from '../helpers/redis.js'
import { Redis } from 'ioredis'

interface LinkAnswer { id: string, url: string, expires_at: string, merchant_id: string | null, reference: string | null }

async function makeLink (b: Built, body?: Record<string, unknown>): Promise<LinkAnswer> {
  const res = await b.app.inject({ method: 'POST', url: '/internal/v1/onboarding-links', headers: b.auth, ...(body === undefined ? {} : { payload: body }) })
  if (res.statusCode !== 201) throw new Error(`POST answered ${res.statusCode}: ${res.body}`)
  return res.json()
}

async function linkStatus (b: Built, id: string): Promise<{ statusCode: number, body: Record<string, unknown> }> {
  const res = await b.app.inject({ url: `/internal/v1/onboarding-links/${id}`, headers: b.auth })
  return { statusCode: res.statusCode, body: res.json() }
}

/** A browser opening the link: the state of the authorize redirect and its binding cookie. */
async function visit (b: Built, link: LinkAnswer, cookie?: string): Promise<{ statusCode: number, state: string, cookie: string, body: string }> {
  const url = new URL(link.url)
  const res = await b.app.inject({ url: url.pathname, headers: cookie === undefined ? {} : { cookie } })
  const location = res.headers.location === undefined ? undefined : new URL(String(res.headers.location))
  return { statusCode: res.statusCode, state: location?.searchParams.get('state') ?? '', cookie: cookiesOf(res.headers) || (cookie ?? ''), body: res.body }
}

const PORTAL = { ONBOARDING_SUCCESS_URL: 'https://portal.example/connected', ONBOARDING_FAILURE_URL: 'https://portal.example/failed' }

t.test('POST makes a link on PUBLIC_BASE_URL; merchant_id and reference are kept; bad bodies → 400', async t => {
  const b = await build(t, { env: { PUBLIC_BASE_URL: 'https://partner.example/broker', ONBOARDING_LINK_TTL_SECONDS: '3600' } })
  const bare = await makeLink(b)
  t.match(bare.id, /^onb_[A-Za-z0-9_-]{22}$/)
  t.match(bare.url, new RegExp(`^https://partner\\.example/broker/oauth/links/${bare.id}/[A-Za-z0-9_-]{43}$`))
  t.equal(bare.merchant_id, null)
  t.equal(bare.reference, null)
  t.ok(Math.abs(Date.parse(bare.expires_at) - Date.now() - 3600_000) < 5000, 'expires after ONBOARDING_LINK_TTL_SECONDS')
  const full = await makeLink(b, { merchant_id: 'm_link', reference: 'portal-account 42 — Zoë' })
  t.equal(full.merchant_id, 'm_link')
  t.equal(full.reference, 'portal-account 42 — Zoë')

  for (const body of [{ reference: '' }, { reference: 'x'.repeat(257) }, { reference: 'a\nb' }, { merchant_id: 'bad id' }, { other: 1 }, { reference: 5 }]) {
    const res = await b.app.inject({ method: 'POST', url: '/internal/v1/onboarding-links', headers: b.auth, payload: body })
    t.equal(res.statusCode, 400, JSON.stringify(body).slice(0, 40))
    t.equal(res.json().error.code, 'invalid_request')
  }
  t.equal((await b.app.inject({ method: 'POST', url: '/internal/v1/onboarding-links' })).statusCode, 401, 'a bearer credential is required')

  const redis = new Redis(b.redis.url)
  t.teardown(() => { redis.disconnect() })
  const key = new URL(full.url).pathname.split('/').pop() ?? ''
  const stored = JSON.stringify(await redis.hgetall(`${b.config.redisKeyPrefix}link:{${full.id}}`))
  t.notOk(stored.includes(key), 'the URL\'s key is not stored, only its hash')
  const ttl = await redis.ttl(`${b.config.redisKeyPrefix}link:{${full.id}}`)
  t.ok(ttl > 3600 && ttl <= 3600 + 31 * 86400, 'the record expires (after the link, with time to read its outcome)')
})

t.test('the portal flow: link → connect → success redirect with onboarding_id → GET says connected', async t => {
  const b = await build(t, { env: PORTAL })
  const link = await makeLink(b, { reference: 'acct-7' })
  t.same((await linkStatus(b, link.id)).body, { id: link.id, status: 'pending', merchant_id: null, reference: 'acct-7', failure_reason: null, created_at: (await linkStatus(b, link.id)).body.created_at, expires_at: link.expires_at, completed_at: null })

  const browser = await visit(b, link)
  t.equal(browser.statusCode, 302, 'the link redirects to CyberSource')
  const done = await callback(b, { code: b.sim.control.issueCode('portal_m'), state: browser.state }, browser.cookie)
  const location = new URL(String(done.headers.location))
  t.equal(location.origin + location.pathname, PORTAL.ONBOARDING_SUCCESS_URL)
  t.equal(location.searchParams.get('merchant_id'), 'portal_m')
  t.equal(location.searchParams.get('onboarding_id'), link.id)

  const status = await linkStatus(b, link.id)
  t.equal(status.body.status, 'connected')
  t.equal(status.body.merchant_id, 'portal_m')
  t.equal(status.body.reference, 'acct-7')
  t.type(status.body.completed_at, 'string')

  const again = await visit(b, link)
  t.equal(again.statusCode, 200, 'a connected link opened again: a page, no new onboarding')
  t.match(again.body, /already connected/i)
  t.equal(again.state, '')
})

t.test('a link opened twice (a mail scanner first, then the merchant): each visit a fresh state bound to its browser', async t => {
  const b = await build(t, { env: PORTAL })
  const link = await makeLink(b)
  const scanner = await visit(b, link)
  const merchant = await visit(b, link)
  t.equal(scanner.statusCode, 302)
  t.not(scanner.state, merchant.state, 'two states')
  t.not(scanner.cookie, merchant.cookie, 'two browsers, two bindings')
  const stolen = await callback(b, { code: b.sim.control.issueCode('m_x'), state: merchant.state }, scanner.cookie)
  t.match(String(stolen.headers.location), /reason=browser_mismatch/, 'the scanner\'s browser cannot complete the merchant\'s state')
  const done = await callback(b, { code: b.sim.control.issueCode('m_x'), state: merchant.state }, merchant.cookie)
  t.match(String(done.headers.location), /merchant_id=m_x/)
  t.equal((await linkStatus(b, link.id)).body.status, 'connected')
  const head = await b.app.inject({ method: 'HEAD', url: new URL(link.url).pathname })
  t.not(head.statusCode, 302, 'a HEAD starts nothing')
})

t.test('a bound link and another merchant: reason=merchant_mismatch with onboarding_id, the link says failed; the right merchant then connects', async t => {
  const b = await build(t, { env: PORTAL })
  const link = await makeLink(b, { merchant_id: 'right_m' })
  const first = await visit(b, link)
  const wrong = await callback(b, { code: b.sim.control.issueCode('wrong_m'), state: first.state }, first.cookie)
  const location = new URL(String(wrong.headers.location))
  t.equal(location.searchParams.get('reason'), 'merchant_mismatch')
  t.equal(location.searchParams.get('onboarding_id'), link.id)
  t.equal(await b.app.tokenStore.get('wrong_m'), undefined, 'tokens discarded')
  const failed = await linkStatus(b, link.id)
  t.equal(failed.body.status, 'failed')
  t.equal(failed.body.failure_reason, 'merchant_mismatch')
  t.equal(failed.body.merchant_id, 'right_m', 'still the bound merchant')

  const retry = await visit(b, link, first.cookie)
  await callback(b, { code: b.sim.control.issueCode('right_m'), state: retry.state }, retry.cookie)
  const connected = await linkStatus(b, link.id)
  t.equal(connected.body.status, 'connected')
  t.equal(connected.body.failure_reason, null)
})

t.test('expired, unknown and tampered links: pages, never an onboarding; GET unknown → 404 onboarding_not_found', async t => {
  let clock = Date.now()
  const b = await build(t, { env: { ONBOARDING_LINK_TTL_SECONDS: '60' }, now: () => clock })
  const link = await makeLink(b)
  const path = new URL(link.url).pathname
  const tampered = await b.app.inject({ url: `${path.slice(0, -1)}${path.endsWith('A') ? 'B' : 'A'}` })
  t.equal(tampered.statusCode, 404, 'a wrong key: 404 page')
  t.equal(tampered.headers.location, undefined)
  t.equal((await b.app.inject({ url: '/oauth/links/onb_AAAAAAAAAAAAAAAAAAAAAA/x' })).statusCode, 404, 'an unknown link: 404 page')
  clock += 61_000
  const expired = await b.app.inject({ url: path })
  t.equal(expired.statusCode, 410, 'an expired link: 410 page')
  t.match(expired.body, /expired/i)
  t.equal((await linkStatus(b, link.id)).body.status, 'expired')
  const unknown = await linkStatus(b, 'onb_nope')
  t.equal(unknown.statusCode, 404)
  t.equal((unknown.body.error as { code: string }).code, 'onboarding_not_found')
  const redis = new Redis(b.redis.url)
  t.teardown(() => { redis.disconnect() })
  t.same(await scanKeys(redis, `${b.config.redisKeyPrefix}state:*`), [], 'no state was made')
})

t.test('a connected link never connects a second merchant: a later callback of another of its states exchanges nothing', async t => {
  const b = await build(t, { env: PORTAL })
  const link = await makeLink(b, { reference: 'acct-U' })
  const first = await visit(b, link)
  const second = await visit(b, link) // a leaked URL, opened by someone else, waiting
  const ok = await callback(b, { code: b.sim.control.issueCode('m_one'), state: first.state }, first.cookie)
  t.match(String(ok.headers.location), /merchant_id=m_one/)
  const exchanges = (): number => b.sim.control.requests().filter(r => r.form.grant_type === 'authorization_code').length
  const before = exchanges()
  const late = await callback(b, { code: b.sim.control.issueCode('m_two'), state: second.state }, second.cookie)
  t.equal(late.statusCode, 401, 'refused as a used sign-in (a page, not a redirect naming the link)')
  t.equal(late.headers.location, undefined)
  t.equal(exchanges(), before, 'nothing exchanged')
  t.equal(await b.app.tokenStore.get('m_two'), undefined, 'the second merchant is not stored')
  const status = await linkStatus(b, link.id)
  t.equal(status.body.status, 'connected')
  t.equal(status.body.merchant_id, 'm_one', 'the link keeps its merchant')
})
