// The internal API's front door: the bearer guard, the audit trail (a line per call, a summary
// per caller and merchant for successful lookups), merchant id validation,
// unknown merchants and routes, and onboarding links.
import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import { build, callback, cookiesOf, onboard, until, type Built } from '../helper.js'
import { createKeyRing } from '../../src/key-ring.js'
import { createRedisKeys } from '../../src/redis-keys.js'
import { createTokenStore, type MerchantRecord } from '../../src/token-store.js'

type Method = 'GET' | 'POST' | 'DELETE'

const routes = (mid: string): Array<{ method: Method, url: string }> => [
  { method: 'GET', url: `/internal/v1/merchants/${mid}/access-token` },
  { method: 'GET', url: `/internal/v1/merchants/${mid}` },
  { method: 'POST', url: `/internal/v1/merchants/${mid}/refresh` },
  { method: 'DELETE', url: `/internal/v1/merchants/${mid}` }
]

interface ErrorBody { error: { code: string, message: string, correlation_id: string } }

/** Asserts the JSON error shape (docs/api.md) and returns the code. */
function errorCode (t: Test, res: { statusCode: number, headers: Record<string, unknown>, body: string }, what: string): string {
  t.match(String(res.headers['content-type']), /^application\/json/, `${what}: JSON`)
  const body = JSON.parse(res.body) as ErrorBody
  t.same(Object.keys(body), ['error'], `${what}: only "error"`)
  t.same(Object.keys(body.error).sort(), ['code', 'correlation_id', 'message'], `${what}: error fields`)
  t.type(body.error.message, 'string')
  t.equal(body.error.correlation_id, res.headers['x-correlation-id'], `${what}: correlation id echoed`)
  return body.error.code
}

function auditLines (b: Built): Array<Record<string, unknown>> {
  return b.logs.lines().filter(l => l.msg === 'internal api call')
}

/** The one audit line of the request sent with this correlation id. */
function auditOf (t: Test, b: Built, correlationId: string): Record<string, unknown> {
  const lines = auditLines(b).filter(l => l.reqId === correlationId)
  t.equal(lines.length, 1, `one audit line for ${correlationId}`)
  return lines[0] ?? {}
}

/** The merchant's stored record, read and decrypted beside the app (its decorators are encapsulated). */
async function storedRecord (t: Test, b: Built, mid: string): Promise<MerchantRecord> {
  const redis = new Redis(b.redis.url)
  t.teardown(() => redis.disconnect())
  const store = createTokenStore(redis, createKeyRing(b.config.encryptionKeys), createRedisKeys(b.config.redisKeyPrefix))
  const r = await store.get(mid)
  if (r === undefined) throw new Error(`${mid} is not stored`)
  return r
}

/** The status and error code of an answer: bodies that hold a token or a state never go into a message. */
function said (res: { statusCode: number, body: string }): string {
  let code: unknown
  try { code = (JSON.parse(res.body) as { error?: { code?: unknown } }).error?.code } catch {}
  return typeof code === 'string' ? `${res.statusCode} ${code}` : String(res.statusCode)
}

async function lookupToken (b: Built, mid: string): Promise<string> {
  const res = await b.app.inject({ url: `/internal/v1/merchants/${mid}/access-token`, headers: b.auth })
  if (res.statusCode !== 200) throw new Error(`lookup of ${mid}: ${said(res)}`)
  return (res.json() as { access_token: string }).access_token
}

t.test('internal API guard', async t => {
  const b = await build(t)
  const mid = 'm_guard'
  t.equal((await onboard(b, mid)).statusCode, 200)
  const accessToken = await lookupToken(b, mid)
  const stored = await storedRecord(t, b, mid)
  t.equal(stored.accessToken, accessToken)
  const { apiSecret, otherApiSecret, clientSecret } = b.secrets
  const lastChar = apiSecret.at(-1) === 'A' ? 'B' : 'A'
  const nearMiss = apiSecret.slice(0, -1) + lastChar

  await t.test('bad or missing credentials → 401 unauthorized on every route', async t => {
    const bad: Array<[string, string | undefined]> = [
      ['no Authorization header', undefined],
      ['Basic scheme with the right secret', `Basic ${Buffer.from(`payments:${apiSecret}`).toString('base64')}`],
      ['Basic scheme, raw secret', `Basic ${apiSecret}`],
      ['the bare secret', apiSecret],
      ['Bearer alone', 'Bearer'],
      ['Bearer with an empty secret', 'Bearer '],
      ['Bearer with a wrong secret', 'Bearer not-the-secret-at-all-not-the-secret-at-all'],
      ['secret differing in the last character', `Bearer ${nearMiss}`],
      ['secret with a prefix only', `Bearer ${apiSecret.slice(0, -1)}`],
      ['secret with an extra character', `Bearer ${apiSecret}x`],
      ['secret followed by many characters', `Bearer ${apiSecret}${'x'.repeat(300)}`],
      ['secret followed by a space', `Bearer ${apiSecret} `],
      ['two spaces after Bearer', `Bearer  ${apiSecret}`],
      ['caller name and secret', `Bearer payments:${apiSecret}`],
      ['the partner client secret', `Bearer ${clientSecret}`]
    ]
    const targets = [
      ...routes(mid),
      { method: 'GET' as const, url: '/internal/v1/merchants' },
      { method: 'GET' as const, url: '/internal/v1/merchants?limit=2' },
      { method: 'POST' as const, url: '/internal/v1/onboarding-links' }
    ]
    for (const [what, authorization] of bad) {
      for (const { method, url } of targets) {
        const res = await b.app.inject({
          method,
          url,
          headers: authorization === undefined ? {} : { authorization },
          ...(url.endsWith('onboarding-links') ? { payload: { merchant_id: mid } } : {})
        })
        t.equal(res.statusCode, 401, `${what}: ${method} ${url}`)
        t.equal(errorCode(t, res, what), 'unauthorized', `${what}: ${method} ${url}`)
        t.notMatch(res.body, accessToken)
      }
    }
    // None of the rejected calls did anything.
    t.equal(b.sim.control.stats().refreshes, 0, 'no forced refresh happened')
    t.equal((await b.app.inject({ url: `/internal/v1/merchants/${mid}`, headers: b.auth })).statusCode, 200, 'the merchant was not deleted')
    t.equal(await lookupToken(b, mid), accessToken)
  })

  await t.test('credentials are checked before the request is validated', async t => {
    const res = await b.app.inject({ url: '/internal/v1/merchants/bad.id/access-token' })
    t.equal(res.statusCode, 401)
    t.equal(errorCode(t, res, 'bad id without credentials'), 'unauthorized')
  })

  await t.test('each configured caller is let in', async t => {
    for (const [caller, secret] of [['payments', apiSecret], ['reports', otherApiSecret]]) {
      const ok = await b.app.inject({ url: `/internal/v1/merchants/${mid}/access-token`, headers: { authorization: `Bearer ${secret}` } })
      t.equal(ok.statusCode, 200, `${caller}: lookup`)
      t.equal(ok.json().access_token, accessToken)
      const missing = await b.app.inject({ url: '/internal/v1/merchants/m_nobody/access-token', headers: { authorization: `Bearer ${secret}` } })
      t.equal(missing.statusCode, 404, `${caller}: unknown merchant`)
      t.equal(errorCode(t, missing, caller), 'merchant_not_found')
      const list = await b.app.inject({ url: '/internal/v1/merchants', headers: { authorization: `Bearer ${secret}` } })
      t.equal(list.statusCode, 200, `${caller}: list`)
    }
    // The scheme name is case-insensitive (RFC 9110 §11.1).
    const lower = await b.app.inject({ url: `/internal/v1/merchants/${mid}`, headers: { authorization: `bearer ${otherApiSecret}` } })
    t.equal(lower.statusCode, 200, 'lower-case scheme')
  })

  await t.test('the audit line: caller, merchant id, outcome, status; never a secret or token', async t => {
    // (Successful lookups are summarized instead: next test.)
    const calls: Array<{ id: string, secret: string | undefined, url: string, caller?: string, status: number, outcome: string, merchant?: string }> = [
      { id: 'audit-status-reports', secret: otherApiSecret, url: `/internal/v1/merchants/${mid}`, caller: 'reports', status: 200, outcome: 'ok', merchant: mid },
      { id: 'audit-unknown-reports', secret: otherApiSecret, url: '/internal/v1/merchants/m_unknown/access-token', caller: 'reports', status: 404, outcome: 'merchant_not_found', merchant: 'm_unknown' },
      { id: 'audit-invalid-payments', secret: apiSecret, url: '/internal/v1/merchants/bad.id', caller: 'payments', status: 400, outcome: 'invalid_request' },
      { id: 'audit-nearmiss-nocaller', secret: nearMiss, url: `/internal/v1/merchants/${mid}/access-token`, status: 401, outcome: 'unauthorized', merchant: mid },
      { id: 'audit-none-nocaller', secret: undefined, url: `/internal/v1/merchants/${mid}`, status: 401, outcome: 'unauthorized', merchant: mid }
    ]
    for (const c of calls) {
      const res = await b.app.inject({
        url: c.url,
        headers: { 'x-correlation-id': c.id, ...(c.secret === undefined ? {} : { authorization: `Bearer ${c.secret}` }) }
      })
      t.equal(res.statusCode, c.status, c.id)
    }
    for (const c of calls) {
      const line = auditOf(t, b, c.id)
      t.equal(line.level, 30, `${c.id}: info level`)
      t.equal(line.caller, c.caller, `${c.id}: caller`)
      t.equal(line.status, c.status, `${c.id}: status`)
      t.equal(line.outcome, c.outcome, `${c.id}: outcome`)
      t.equal(line.merchant_id, c.merchant, `${c.id}: merchant id${c.merchant === undefined ? ' (none for an invalid one)' : ''}`)
      t.equal(line.method, 'GET')
      t.type(line.route, 'string')
    }
    // The onboarding-link call names its merchant too (it comes in the body).
    const link = await b.app.inject({ method: 'POST', url: '/internal/v1/onboarding-links', headers: { ...b.auth, 'x-correlation-id': 'audit-link-payments' }, payload: { merchant_id: 'm_audit_link' } })
    t.equal(link.statusCode, 201)
    const linkLine = auditOf(t, b, 'audit-link-payments')
    t.match(linkLine, { caller: 'payments', status: 201, outcome: 'ok', merchant_id: 'm_audit_link' })

    // No line anywhere carries a credential, secret or token.
    const text = b.logs.text()
    for (const [what, secret] of Object.entries({ apiSecret, otherApiSecret, nearMiss, clientSecret, accessToken, refreshToken: stored.refreshToken })) {
      t.notOk(text.includes(secret), `logs do not contain the ${what}`)
    }
    t.notOk(text.includes('Bearer '), 'no Authorization header value is logged')
  })

  await t.test('successful lookups: one summary line per caller and merchant and interval', async t => {
    const a = await build(t, { env: { AUDIT_SUMMARY_SECONDS: '1' } })
    for (const m of ['m_sum_a', 'm_sum_b']) t.equal((await onboard(a, m)).statusCode, 200)
    const lookups: Array<[string, string, number]> = [['payments', 'm_sum_a', 3], ['reports', 'm_sum_a', 2], ['payments', 'm_sum_b', 1]]
    const secretOf: Record<string, string> = { payments: a.secrets.apiSecret, reports: a.secrets.otherApiSecret }
    const startedAt = Date.now()
    for (const [caller, m, n] of lookups) {
      for (let i = 0; i < n; i++) {
        const res = await a.app.inject({ url: `/internal/v1/merchants/${m}/access-token`, headers: { authorization: `Bearer ${secretOf[caller]}`, 'x-correlation-id': `sum-${caller}-${m}-${i}` } })
        t.equal(res.statusCode, 200)
      }
    }
    // A failed lookup keeps its own line and is not counted.
    const missing = await a.app.inject({ url: '/internal/v1/merchants/m_sum_none/access-token', headers: { ...a.auth, 'x-correlation-id': 'sum-missing' } })
    t.equal(missing.statusCode, 404)
    t.equal(auditOf(t, a, 'sum-missing').outcome, 'merchant_not_found')

    // A HEAD of the token route sends no token: a line of its own, not counted.
    const head = await a.app.inject({ method: 'HEAD', url: '/internal/v1/merchants/m_sum_a/access-token', headers: { ...a.auth, 'x-correlation-id': 'sum-head' } })
    t.equal(head.statusCode, 200)
    t.match(auditOf(t, a, 'sum-head'), { method: 'HEAD', outcome: 'ok', merchant_id: 'm_sum_a' })

    const summaries = (): Array<Record<string, unknown>> => a.logs.lines().filter(l => l.msg === 'internal api lookups')
    // The 1 s timer may split a pair's lookups over two summaries: counts add up.
    const totals = (): string[] => {
      const sum = new Map<string, number>()
      for (const l of summaries()) {
        const k = `${String(l.caller)} ${String(l.merchant_id)}`
        sum.set(k, (sum.get(k) ?? 0) + Number(l.count))
      }
      return [...sum].map(([k, n]) => `${k} ${n}`).sort()
    }
    const expected = lookups.map(([c, m, n]) => `${c} ${m} ${n}`).sort()
    t.ok(await until(() => totals().length >= expected.length, 5000), 'summaries written within the interval')
    t.same(totals(), expected, 'every successful lookup counted once, per caller and merchant')
    for (const l of summaries()) {
      t.equal(l.level, 30)
      t.equal(l.route, '/internal/v1/merchants/:merchantId/access-token')
      t.equal(l.outcome, 'ok')
      const first = Date.parse(String(l.first_at))
      const last = Date.parse(String(l.last_at))
      t.ok(first >= startedAt - 1000 && first <= last && last <= Date.now(), 'first and last times')
    }
    t.notOk(auditLines(a).some(l => String(l.reqId).startsWith('sum-payments') || String(l.reqId).startsWith('sum-reports')), 'no line per successful lookup')

    // Lookups after a flush are counted afresh; pending counts are written at close.
    t.equal((await a.app.inject({ url: '/internal/v1/merchants/m_sum_b/access-token', headers: a.auth })).statusCode, 200)
    await a.app.close()
    const last = summaries().at(-1)
    t.match(last, { caller: 'payments', merchant_id: 'm_sum_b', count: 1 }, 'the pending count is written at close')
    t.notOk(a.logs.text().includes(a.secrets.apiSecret), 'no secret in the logs')
  })

  await t.test('AUDIT_SUMMARY_SECONDS=0: one audit line per lookup', async t => {
    const a = await build(t, { env: { AUDIT_SUMMARY_SECONDS: '0' } })
    t.equal((await onboard(a, 'm_each')).statusCode, 200)
    const res = await a.app.inject({ url: '/internal/v1/merchants/m_each/access-token', headers: { ...a.auth, 'x-correlation-id': 'each-lookup-1' } })
    t.equal(res.statusCode, 200)
    t.match(auditOf(t, a, 'each-lookup-1'), { level: 30, caller: 'payments', merchant_id: 'm_each', status: 200, outcome: 'ok', method: 'GET' })
    await a.app.close()
    t.same(a.logs.lines().filter(l => l.msg === 'internal api lookups'), [], 'no summaries')
  })

  await t.test('an invalid merchant id → 400 invalid_request on every route', async t => {
    const ids = [
      'a'.repeat(65), // one too long
      `${'a'.repeat(64)}b`,
      'a.b', 'a$b', 'a%20b', 'a%2Fb', '%C3%A4', 'a%00b', 'a%3Bb', 'a~b', 'a+b', "a'b"
    ]
    for (const id of ids) {
      for (const { method, url } of routes(id)) {
        const res = await b.app.inject({ method, url, headers: b.auth })
        t.equal(res.statusCode, 400, `${method} ${url}`)
        t.equal(errorCode(t, res, url), 'invalid_request', `${method} ${url}`)
      }
    }
    // The longest valid id is accepted (and unknown).
    const max = 'Z'.repeat(64)
    const res = await b.app.inject({ url: `/internal/v1/merchants/${max}/access-token`, headers: b.auth })
    t.equal(res.statusCode, 404)
    t.equal(errorCode(t, res, 'max id'), 'merchant_not_found')
  })

  await t.test('a very long merchant id → 400 invalid_request, not the router\'s 414', async t => {
    for (const { method, url } of routes('a'.repeat(200))) {
      const res = await b.app.inject({ method, url, headers: b.auth })
      t.equal(res.statusCode, 400, `${method} ${url}`)
      t.equal(errorCode(t, res, url), 'invalid_request')
    }
  })

  await t.test('a malformed URL → 400 invalid_request in the error shape, the URL never echoed', async t => {
    const marker = `SECRETX${apiSecret.slice(-6)}`
    const urls = [
      `/internal/v1/merchants/%ZZ?x=${marker}`,
      `/internal/v1/merchants/%ZZ/access-token?x=${marker}`,
      `/internal/v1/merchants/a%E0%A4%A/refresh?x=${marker}`,
      `/internal/v1/merchants/${'a'.repeat(200)}?x=${marker}`
    ]
    for (const url of urls) {
      for (const method of ['GET', 'POST', 'DELETE'] as Method[]) {
        const res = await b.app.inject({ method, url, headers: b.auth })
        t.equal(res.statusCode, 400, `${method} ${url.slice(0, 40)}`)
        t.equal(errorCode(t, res, url), 'invalid_request', `${method} ${url.slice(0, 40)}`)
        t.notOk(res.body.includes(marker), 'the query is not echoed')
        t.notOk(res.body.includes('%ZZ') || res.body.includes('%E0') || res.body.includes('aaaaaaaaaa'), 'nor the path')
      }
    }
    t.notOk(b.logs.text().includes(marker), 'nor logged')
    t.equal((await b.app.inject({ url: `/internal/v1/merchants/${mid}`, headers: b.auth })).statusCode, 200, 'the merchant is untouched')
  })

  await t.test('list query validation', async t => {
    for (const q of ['limit=0', 'limit=501', 'limit=abc', 'limit=-1', 'limit=1.5', `cursor=${'x'.repeat(65)}`, 'cursor=not-a-cursor']) {
      const res = await b.app.inject({ url: `/internal/v1/merchants?${q}`, headers: b.auth })
      t.equal(res.statusCode, 400, q)
      t.equal(errorCode(t, res, q), 'invalid_request', q)
    }
  })

  await t.test('unknown merchant → 404 merchant_not_found on lookup, status, refresh, delete', async t => {
    for (const { method, url } of routes('m_never_onboarded')) {
      const res = await b.app.inject({ method, url, headers: b.auth })
      t.equal(res.statusCode, 404, `${method} ${url}`)
      t.equal(errorCode(t, res, url), 'merchant_not_found', `${method} ${url}`)
    }
    t.equal(b.sim.control.stats().refreshes, 0, 'no token request for an unknown merchant')
  })

  await t.test('unknown route → 404 JSON', async t => {
    const unknown: Array<{ method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE', url: string }> = [
      { method: 'GET', url: '/internal/v1/nope' },
      { method: 'GET', url: '/internal/v2/merchants' },
      { method: 'GET', url: `/internal/v1/merchants/${mid}/refresh-token` },
      { method: 'GET', url: `/internal/v1/merchants/${mid}/access-token/extra` },
      { method: 'PUT', url: `/internal/v1/merchants/${mid}` },
      { method: 'PATCH', url: `/internal/v1/merchants/${mid}` },
      { method: 'GET', url: '/internal/v1/onboarding-links' },
      { method: 'POST', url: `/internal/v1/merchants/${mid}/access-token` }
    ]
    for (const { method, url } of unknown) {
      const res = await b.app.inject({ method, url, headers: b.auth })
      t.equal(res.statusCode, 404, `${method} ${url}`)
      t.equal(errorCode(t, res, url), 'not_found', `${method} ${url}`)
      t.notMatch(res.body, accessToken)
    }
  })

  await t.test('POST /internal/v1/onboarding-links', async t => {
    const link = async (payload: unknown): Promise<{ statusCode: number, body: string, headers: Record<string, unknown>, json: () => any }> =>
      await b.app.inject({ method: 'POST', url: '/internal/v1/onboarding-links', headers: b.auth, payload: payload as Record<string, unknown> })
    /** A browser opening the link's URL, then the callback CyberSource sends it to. */
    const complete = async (url: string, merchantId: string): Promise<{ statusCode: number, body: string }> => {
      const visit = await b.app.inject({ url: new URL(url).pathname })
      const state = new URL(String(visit.headers.location)).searchParams.get('state') ?? ''
      return await callback(b, { code: b.sim.control.issueCode(merchantId), state }, cookiesOf(visit.headers))
    }

    await t.test('no body at all (no content-type) or `{}` → 201 with an unbound link that works', async t => {
      const noBody = await b.app.inject({ method: 'POST', url: '/internal/v1/onboarding-links', headers: b.auth })
      const empty = await b.app.inject({ method: 'POST', url: '/internal/v1/onboarding-links', headers: { ...b.auth, 'content-type': 'application/json' }, payload: '{}' })
      for (const [what, res, mid] of [['no body', noBody, 'm_link_nobody'], ['{}', empty, 'm_link_emptyobj']] as const) {
        t.equal(res.statusCode, 201, `${what}: ${said(res)}`)
        const body = res.json() as { url: string, merchant_id: unknown }
        t.same(Object.keys(body).sort(), ['expires_at', 'id', 'merchant_id', 'reference', 'url'], what)
        t.equal(body.merchant_id, null, `${what}: unbound`)
        t.notOk(body.url.includes(b.secrets.clientSecret), `${what}: no client secret in the link`)
        t.equal((await complete(body.url, mid)).statusCode, 200, `${what}: the onboarding completes`)
        t.equal((await b.app.inject({ url: `/internal/v1/merchants/${mid}`, headers: b.auth })).statusCode, 200, `${what}: ${mid} is connected`)
      }
      t.not(noBody.json().url, empty.json().url)
    })

    await t.test('a bound link used by another merchant → merchant_mismatch, nothing stored', async t => {
      const res = await link({ merchant_id: 'm_link_bound' })
      t.equal((await complete(res.json().url as string, 'm_link_other')).statusCode, 403)
      for (const m of ['m_link_bound', 'm_link_other']) {
        t.equal((await b.app.inject({ url: `/internal/v1/merchants/${m}`, headers: b.auth })).statusCode, 404, `${m} not stored`)
      }
    })

    await t.test('invalid body → 400 invalid_request', async t => {
      for (const payload of [{ merchant_id: 'a b' }, { merchant_id: 'a'.repeat(65) }, { merchant_id: '' }, { merchant_id: 42 }, { merchant_id: 'm_1', extra: true }]) {
        const res = await link(payload)
        t.equal(res.statusCode, 400, JSON.stringify(payload))
        t.equal(errorCode(t, res, JSON.stringify(payload)), 'invalid_request')
      }
    })
  })
})
