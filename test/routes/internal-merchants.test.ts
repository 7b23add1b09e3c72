// /internal/v1/merchants: lookup and status shapes, pagination, forced refresh, delete, and the
// failure taxonomy (refresh token rejected, CyberSource down, partner credentials rejected,
// Redis down), against a real Redis and the simulator over HTTP, with a movable clock.
import t, { type Test } from 'tap'
import { createServer } from 'node:http'
import { Redis } from 'ioredis'
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { build, onboard, secrets, CLIENT_ID, type BuildOptions, type Built, until } from '../helper.js'
import { startRedis } from '../helpers/redis.js'
import { createKeyRing } from '../../src/key-ring.js'
import { createRedisKeys } from '../../src/redis-keys.js'
import { createTokenStore, type MerchantRecord, type TokenStore } from '../../src/token-store.js'
import { TOKEN_PATH, buildSimulator, type Simulator, type SimulatorOptions } from '../../src/simulator/app.js'

/** Past the background refresh point (2/3 ± 10 %) but with 180 s of validity left. */
const PAST_REFRESH_POINT_MS = 720_000
/** 30 s of validity left: below MIN_VALIDITY, a lookup must refresh first. */
const NEARLY_EXPIRED_MS = 870_000
const SCOPE = 'payments_with_standalone_credit transactions invoicing boarding'
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/

interface Harness {
  b: Built
  /** Moves the shared clock of the app and the simulator. */
  advance: (ms: number) => void
  now: () => number
  /** Every response body and header block seen, for the leak check. */
  seen: string[]
  call: (method: 'GET' | 'POST' | 'DELETE', url: string) => Promise<{ statusCode: number, body: string, headers: Record<string, unknown>, json: () => any }>
  lookup: (mid: string) => Promise<{ statusCode: number, body: string, headers: Record<string, unknown>, json: () => any }>
  status: (mid: string) => Promise<{ statusCode: number, body: string, headers: Record<string, unknown>, json: () => any }>
  store: TokenStore
  redis: Redis
  onboard: (mid: string) => Promise<void>
  /** Asserts that no response seen so far carried a refresh token (stored or sent to CyberSource). */
  assertNoRefreshTokenLeaked: (t: Test, mids: string[]) => Promise<void>
}

interface HarnessOptions extends Omit<BuildOptions, 'now'> {
  sim?: Partial<SimulatorOptions>
  /** The clock moves only with advance(). */
  frozen?: boolean
  /** Hooks added to the simulator before it listens. */
  beforeListen?: (sim: Simulator) => void
}

async function harness (t: Test, opts: HarnessOptions = {}): Promise<Harness> {
  let offset = 0
  const start = Date.now()
  const now = opts.frozen === true ? (): number => start + offset : (): number => Date.now() + offset
  const { sim, frozen: _frozen, beforeListen, ...rest } = opts
  if (beforeListen !== undefined) {
    rest.secrets ??= secrets()
    const s = buildSimulator({ clientId: CLIENT_ID, clientSecret: rest.secrets.clientSecret, now, ...sim })
    beforeListen(s)
    await s.app.listen({ host: '127.0.0.1', port: 0 })
    t.teardown(async () => await s.app.close())
    rest.simulator = { ...s, url: `http://127.0.0.1:${(s.app.server.address() as { port: number }).port}` }
  }
  const b = await build(t, { ...rest, now, simulatorOptions: { now, ...sim } })
  const redis = new Redis(b.redis.url, { maxRetriesPerRequest: 1 })
  redis.on('error', () => {})
  t.teardown(() => redis.disconnect())
  const store = createTokenStore(redis, createKeyRing(b.config.encryptionKeys), createRedisKeys(b.config.redisKeyPrefix))
  const seen: string[] = []
  const refreshTokens = new Set<string>()
  const call: Harness['call'] = async (method, url) => {
    const res = await b.app.inject({ method, url, headers: b.auth })
    seen.push(res.body, JSON.stringify(res.headers))
    return res
  }
  return {
    b,
    now,
    advance: (ms) => { offset += ms },
    seen,
    call,
    lookup: async (mid) => await call('GET', `/internal/v1/merchants/${mid}/access-token`),
    status: async (mid) => await call('GET', `/internal/v1/merchants/${mid}`),
    store,
    redis,
    async onboard (mid) {
      const res = await onboard(b, mid)
      if (res.statusCode !== 200) throw new Error(`onboarding ${mid}: ${res.statusCode}`)
      const r = await store.get(mid)
      if (r !== undefined) refreshTokens.add(r.refreshToken)
    },
    async assertNoRefreshTokenLeaked (t, mids) {
      for (const mid of mids) {
        const r = await store.get(mid).catch(() => undefined)
        if (r !== undefined) refreshTokens.add(r.refreshToken)
      }
      for (const req of b.sim.control.requests()) {
        const rt = req.form.refresh_token
        if (typeof rt === 'string') refreshTokens.add(rt)
      }
      t.ok(refreshTokens.size > 0, 'refresh tokens known')
      const all = seen.join('\n')
      let leaked = 0
      for (const rt of refreshTokens) if (all.includes(rt)) leaked++
      t.equal(leaked, 0, `no response carried any of ${refreshTokens.size} refresh tokens`)
      t.notOk(/refresh_token"/.test(all), 'no refresh_token field in any response')
    }
  }
}

/** The status and error code of an answer: a lookup's body holds a token and never goes into a message. */
function said (res: { statusCode: number, body: string }): string {
  let code: unknown
  try { code = (JSON.parse(res.body) as { error?: { code?: unknown } }).error?.code } catch {}
  return typeof code === 'string' ? `${res.statusCode} ${code}` : String(res.statusCode)
}

const refreshRequests = (b: Built): number => b.sim.control.requests().filter(r => r.form.grant_type === 'refresh_token').length
const errorCode = (res: { body: string }): string => (JSON.parse(res.body) as { error: { code: string } }).error?.code

async function stored (h: Harness, mid: string): Promise<MerchantRecord> {
  const r = await h.store.get(mid)
  if (r === undefined) throw new Error(`${mid} is not stored`)
  return r
}

t.test('lookup and status shapes', async t => {
  const h = await harness(t)
  await h.onboard('m_shape')
  const rec = await stored(h, 'm_shape')

  const res = await h.lookup('m_shape')
  t.equal(res.statusCode, 200, said(res))
  t.equal(res.headers['cache-control'], 'no-store')
  t.match(String(res.headers['content-type']), /^application\/json/)
  const body = res.json()
  t.same(Object.keys(body).sort(), ['access_token', 'expires_at', 'expires_in', 'merchant_id', 'scope', 'token_type'])
  t.equal(body.merchant_id, 'm_shape')
  t.equal(body.token_type, 'Bearer')
  t.equal(body.access_token, rec.accessToken, 'the stored access token')
  const claims = JSON.parse(Buffer.from(String(body.access_token).split('.')[1], 'base64url').toString()) as Record<string, unknown>
  t.equal(claims.merchant_id, 'm_shape', 'the token CyberSource issued for this merchant')
  t.match(body.expires_at, ISO)
  t.equal(Date.parse(body.expires_at), rec.accessTokenExpiresAt)
  t.type(body.expires_in, 'number')
  t.ok(Number.isInteger(body.expires_in))
  t.ok(body.expires_in >= 895 && body.expires_in <= 900, `expires_in ≈ 899 (${body.expires_in})`)
  t.equal(body.scope, SCOPE)

  const st = await h.status('m_shape')
  t.equal(st.statusCode, 200, said(st))
  const s = st.json()
  t.same(Object.keys(s).sort(), [
    'access_token_expires_at', 'client_status', 'connected_at', 'last_refreshed_at', 'merchant_id',
    'refresh_token_expires_at', 'scope', 'status'
  ])
  t.match(s, { merchant_id: 'm_shape', status: 'connected', scope: SCOPE, client_status: 'active', last_refreshed_at: null })
  for (const f of ['connected_at', 'access_token_expires_at', 'refresh_token_expires_at']) t.match(s[f], ISO, f)
  t.equal(s.access_token_expires_at, body.expires_at)
  t.ok(Date.parse(s.connected_at) <= Date.now() && Date.parse(s.connected_at) > Date.now() - 60_000, 'connected just now')
  const year = Date.parse(s.refresh_token_expires_at) - Date.parse(s.connected_at)
  t.ok(Math.abs(year - 365 * 24 * 3600_000) < 60_000, 'refresh token lives a year')
  t.notOk(st.body.includes(rec.accessToken), 'no access token in the status')

  const list = await h.call('GET', '/internal/v1/merchants')
  t.equal(list.statusCode, 200)
  t.same(list.json(), { items: [s], next_cursor: null })
  t.notOk(list.body.includes(rec.accessToken), 'no access token in the list')

  // Redis holds no plaintext token.
  const raw = await h.redis.hgetall(`${h.b.config.redisKeyPrefix}merchant:{m_shape}`)
  const dump = JSON.stringify(raw)
  t.ok(Object.keys(raw).length > 0)
  t.notOk(dump.includes(rec.accessToken) || dump.includes(rec.refreshToken), 'tokens encrypted at rest')

  await h.assertNoRefreshTokenLeaked(t, ['m_shape'])
})

t.test('GET and HEAD lookups take one path: the same headers (real HTTP)', async t => {
  const h = await harness(t)
  await h.onboard('m_head')
  const base = await h.b.app.listen({ host: '127.0.0.1', port: 0 })
  const fetchLookup = async (method: 'GET' | 'HEAD', headers: Record<string, string> = {}): Promise<{ status: number, headers: Record<string, string>, body: string }> => {
    const res = await fetch(`${base}/internal/v1/merchants/m_head/access-token`, { method, headers: { ...h.b.auth, ...headers } })
    return { status: res.status, headers: Object.fromEntries(res.headers), body: await res.text() }
  }
  const get = await fetchLookup('GET')
  const head = await fetchLookup('HEAD')
  t.equal(get.status, 200, said({ statusCode: get.status, body: get.body }))
  t.equal(head.status, 200)
  t.equal(head.body, '', 'no body for a HEAD')
  t.equal((JSON.parse(get.body) as { merchant_id: string }).merchant_id, 'm_head')
  t.match(get.headers, {
    'x-correlation-id': /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
    'x-content-type-options': 'nosniff',
    'cache-control': 'no-store',
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(get.body))
  })
  // (fetch asks for the connection to be closed after a HEAD, and the answer says it will.)
  const unique = ({ date: _date, 'x-correlation-id': _id, connection: _c, 'keep-alive': _k, ...rest }: Record<string, string>): Record<string, string> => rest
  t.same(unique(get.headers), unique(head.headers), 'the same headers, but for the date, the correlation id and the connection\'s')
  t.match(get.headers, { connection: 'keep-alive', 'keep-alive': 'timeout=10' })
  t.not(get.headers['x-correlation-id'], head.headers['x-correlation-id'])
  t.equal((await fetchLookup('GET', { 'x-correlation-id': 'pay-lookup-0001' })).headers['x-correlation-id'], 'pay-lookup-0001', 'the caller\'s id')
})

t.test('an onSend hook added beside the app sees every lookup answer (no route answers past Fastify)', async t => {
  const seen: Array<{ method: string, status: number, body: string }> = []
  const h = await harness(t, {
    routes: fp(async (app: FastifyInstance) => {
      app.addHook('onSend', async (request, reply, payload) => {
        if (request.url.endsWith('/access-token')) seen.push({ method: request.method, status: reply.statusCode, body: String(payload) })
        return payload
      })
    })
  })
  await h.onboard('m_hooked')
  const get = await h.lookup('m_hooked')
  t.equal(get.statusCode, 200)
  const head = await h.b.app.inject({ method: 'HEAD', url: '/internal/v1/merchants/m_hooked/access-token', headers: h.b.auth })
  t.equal(head.statusCode, 200)
  t.same(seen.map(s => `${s.method} ${s.status}`), ['GET 200', 'HEAD 200'], 'the hook saw the GET and the HEAD')
  t.equal(seen[0].body, get.body, 'and the body the GET sent')
})

t.test('the lookup body follows the clock and the token', async t => {
  const h = await harness(t, { frozen: true })
  await h.onboard('m_clock')
  // expires_in of a lookup answered between two clock readings: floor((expiry - now) / 1000).
  const lookupWithin = async (): Promise<{ res: Awaited<ReturnType<Harness['lookup']>>, range: [number, number] }> => {
    const before = h.now()
    const res = await h.lookup('m_clock')
    const after = h.now()
    const expiry = Date.parse(res.json().expires_at as string)
    return { res, range: [Math.floor((expiry - after) / 1000), Math.floor((expiry - before) / 1000)] }
  }
  const inRange = (t: Test, got: number, [lo, hi]: [number, number], what: string): void => {
    t.ok(got >= lo && got <= hi, `${what}: expires_in ${got} in [${lo}, ${hi}]`)
  }
  const first = await lookupWithin()
  inRange(t, first.res.json().expires_in, first.range, 'first lookup')
  const again = await lookupWithin()
  t.equal(again.res.body, first.res.body, 'the same bytes while the clock stands still')
  h.advance(1000)
  const second = await lookupWithin()
  inRange(t, second.res.json().expires_in, second.range, 'one second later')
  h.advance(100_000)
  const later = await lookupWithin()
  inRange(t, later.res.json().expires_in, later.range, '100 s later')
  t.ok(later.res.json().expires_in <= first.res.json().expires_in - 100, 'at least 100 s less than the first answer')
  t.equal(later.res.json().access_token, first.res.json().access_token, 'the same token (not yet due)')
  t.equal(later.res.json().expires_at, first.res.json().expires_at)
  // Past the refresh point: the current token (~99 s left) is answered with its current
  // expires_in while the refresh runs in the background; then the new token comes with its own.
  h.advance(700_000)
  const due = await lookupWithin()
  inRange(t, due.res.json().expires_in, due.range, 'due for a refresh')
  t.ok(due.res.json().expires_in >= 60, 'still valid for at least 60 s')
  let refreshed = due.res
  t.ok(await until(async () => {
    refreshed = await h.lookup('m_clock')
    return refreshed.json().access_token !== first.res.json().access_token
  }, 5000), 'a refreshed token')
  t.ok(refreshed.json().expires_in >= 895, `with a full lifetime (${refreshed.json().expires_in as number})`)
  t.equal(Date.parse(refreshed.json().expires_at), (await stored(h, 'm_clock')).accessTokenExpiresAt)
  await h.assertNoRefreshTokenLeaked(t, ['m_clock'])
})

t.test('list pagination', async t => {
  const h = await harness(t)
  const mids = Array.from({ length: 7 }, (_, i) => `m_page_${i}`)
  for (const mid of mids) await h.onboard(mid)
  // Keys that are not merchant records must not show up (and make SCAN take several batches).
  const filler = h.redis.pipeline()
  for (let i = 0; i < 1500; i++) filler.set(`${h.b.config.redisKeyPrefix}other:${i}`, 'x')
  for (let i = 0; i < 300; i++) filler.set(`unrelated:merchant:{m_page_x${i}}`, 'x')
  await filler.exec()
  await h.redis.set(`${h.b.config.redisKeyPrefix}lock:{m_page_0}`, 'someone', 'PX', 60_000)

  for (const limit of [3, 1, 2, 6, 7]) {
    await t.test(`limit=${limit}`, async t => {
      const got: string[] = []
      const sizes: number[] = []
      let cursor: string | null = null
      let pages = 0
      do {
        const res = await h.call('GET', `/internal/v1/merchants?limit=${limit}${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`)
        t.equal(res.statusCode, 200, said(res))
        const page = res.json() as { items: Array<{ merchant_id: string, status: string }>, next_cursor: string | null }
        t.ok(page.items.length <= limit, `page ${pages}: at most ${limit} items`)
        for (const item of page.items) t.equal(item.status, 'connected')
        got.push(...page.items.map(i => i.merchant_id))
        sizes.push(page.items.length)
        cursor = page.next_cursor
        pages++
      } while (cursor !== null && pages < 20)
      t.equal(cursor, null, 'the last page has next_cursor null')
      t.same(got.slice().sort(), mids, 'every merchant exactly once')
      t.ok(sizes.slice(0, -1).every(n => n === limit), `every page but the last is full (${sizes.join(',')})`)
      // A page that ends exactly on the last merchant may be followed by one empty page
      // (SCAN cannot know that nothing follows); a partial page is always the last.
      const full = Array.from({ length: Math.floor(7 / limit) }, () => limit)
      const expected = 7 % limit === 0 ? [full, [...full, 0]] : [[...full, 7 % limit]]
      t.ok(expected.some(e => e.join(',') === sizes.join(',')), `page sizes ${sizes.join(',')}: full pages, then the rest`)
    })
  }

  const all = await h.call('GET', '/internal/v1/merchants')
  t.equal(all.json().items.length, 7, 'default limit covers them all')
  t.equal(all.json().next_cursor, null)

  for (const cursor of ['garbage', Buffer.from('9:0:0').toString('base64url'), Buffer.from('0:abc:0').toString('base64url'), Buffer.from('0:0').toString('base64url')]) {
    const res = await h.call('GET', `/internal/v1/merchants?limit=3&cursor=${encodeURIComponent(cursor)}`)
    t.equal(res.statusCode, 400, `bad cursor ${cursor}`)
    t.equal(errorCode(res), 'invalid_request')
  }
  await h.assertNoRefreshTokenLeaked(t, mids)
})

t.test('listing and counting merchants walk the key space with SCAN, never KEYS', async t => {
  const h = await harness(t)
  const mids = Array.from({ length: 7 }, (_, i) => `m_scan_${i}`)
  for (const mid of mids) await h.onboard(mid)
  const filler = h.redis.pipeline()
  for (let i = 0; i < 500; i++) filler.set(`${h.b.config.redisKeyPrefix}other:${i}`, 'x')
  await filler.exec()
  // From here on, only the app talks to this Redis.
  await h.redis.config('RESETSTAT')

  const got: string[] = []
  let cursor: string | null = null
  let pages = 0
  do {
    const res = await h.call('GET', `/internal/v1/merchants?limit=2${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`)
    t.equal(res.statusCode, 200, said(res))
    const page = res.json() as { items: Array<{ merchant_id: string }>, next_cursor: string | null }
    got.push(...page.items.map(i => i.merchant_id))
    cursor = page.next_cursor
    pages++
  } while (cursor !== null && pages < 20)
  t.ok(pages >= 4, `the list took ${pages} pages`)
  t.same(got.sort(), mids, 'every merchant listed')

  const metrics = await h.b.app.inject({ url: '/metrics' })
  t.equal(metrics.statusCode, 200)
  t.match(metrics.body, /^cybs_merchants\{status="connected"\} 7$/m, 'the scrape counted the merchants')

  const stats = await h.redis.info('commandstats')
  const calls = (name: string): number => Number(new RegExp(`^cmdstat_${name}:calls=(\\d+)`, 'm').exec(stats)?.[1] ?? 0)
  t.ok(calls('scan') >= pages, `SCAN was used (${calls('scan')} calls)`)
  t.equal(calls('keys'), 0, 'KEYS was never called')
  t.notMatch(stats, /^cmdstat_keys:/m, 'no KEYS in the command stats')
})

t.test('forced refresh', async t => {
  const h = await harness(t)
  await h.onboard('m_force')
  const before = (await h.lookup('m_force')).json()
  const rec = await stored(h, 'm_force')
  h.advance(60_000)

  const res = await h.call('POST', '/internal/v1/merchants/m_force/refresh')
  t.equal(res.statusCode, 200, said(res))
  const s = res.json()
  t.match(s, { merchant_id: 'm_force', status: 'connected', scope: SCOPE })
  t.match(s.last_refreshed_at, ISO)
  t.ok(Math.abs(Date.parse(s.last_refreshed_at) - h.now()) < 10_000, 'last_refreshed_at is now (by the service clock)')
  t.ok(Date.parse(s.access_token_expires_at) > Date.parse(before.expires_at), 'a later expiry')
  t.notOk(res.body.includes(rec.accessToken), 'no token in the status')
  t.equal(h.b.sim.control.stats().refreshes, 1, 'one refresh at CyberSource')
  const sent = h.b.sim.control.requests().filter(r => r.form.grant_type === 'refresh_token')
  t.equal(sent.length, 1)
  t.equal(sent[0]?.form.refresh_token, rec.refreshToken, 'the stored refresh token was used')

  const after = await h.lookup('m_force')
  t.equal(after.statusCode, 200)
  t.not(after.json().access_token, before.access_token, 'the lookup returns the new token')
  t.equal(after.json().expires_at, s.access_token_expires_at)
  t.equal((await stored(h, 'm_force')).accessToken, after.json().access_token)
  t.equal((await h.status('m_force')).json().last_refreshed_at, s.last_refreshed_at)
  t.equal(h.b.sim.control.stats().refreshes, 1, 'the lookup did not refresh again')
  await h.assertNoRefreshTokenLeaked(t, ['m_force'])
})

t.test('delete', async t => {
  const h = await harness(t)
  const other = await build(t, { redis: h.b.redis, simulator: h.b.sim, secrets: h.b.secrets, now: h.now })
  await h.onboard('m_del')
  await h.onboard('m_keep')
  const oldToken = (await h.lookup('m_del')).json().access_token as string
  // A second replica with the token cached.
  const cached = await other.app.inject({ url: '/internal/v1/merchants/m_del/access-token', headers: other.auth })
  t.equal(cached.json().access_token, oldToken)
  await h.redis.set(`${h.b.config.redisKeyPrefix}lock:{m_del}`, 'someone', 'PX', 60_000)
  const keysOf = async (mid: string): Promise<string[]> => {
    const found: string[] = []
    let cursor = '0'
    do {
      const [next, batch] = await h.redis.scan(cursor, 'MATCH', `*${mid}*`, 'COUNT', 1000)
      found.push(...batch)
      cursor = next
    } while (cursor !== '0')
    return found
  }
  t.ok((await keysOf('m_del')).length >= 2, 'record and lock exist before')

  const del = await h.call('DELETE', '/internal/v1/merchants/m_del')
  t.equal(del.statusCode, 204)
  t.equal(del.body, '')
  t.same(await keysOf('m_del'), [], 'every key of the merchant is gone')
  for (const res of [await h.lookup('m_del'), await h.status('m_del'), await h.call('POST', '/internal/v1/merchants/m_del/refresh')]) {
    t.equal(res.statusCode, 404)
    t.equal(errorCode(res), 'merchant_not_found')
  }
  const again = await h.call('DELETE', '/internal/v1/merchants/m_del')
  t.equal(again.statusCode, 404, 'second delete')
  t.equal(errorCode(again), 'merchant_not_found')
  t.same((await h.call('GET', '/internal/v1/merchants')).json().items.map((i: { merchant_id: string }) => i.merchant_id), ['m_keep'])
  t.equal((await h.lookup('m_keep')).statusCode, 200, 'other merchants untouched')
  t.equal(h.b.sim.control.stats().refreshes, 0)

  // The other replica drops its cached copy (pub/sub).
  t.ok(await until(async () => (await other.app.inject({ url: '/internal/v1/merchants/m_del/access-token', headers: other.auth })).statusCode === 404, 3000),
    'the other replica stops serving the deleted merchant')

  await t.test('re-onboarding after delete', async t => {
    await h.onboard('m_del')
    const res = await h.lookup('m_del')
    t.equal(res.statusCode, 200)
    t.not(res.json().access_token, oldToken, 'a new token')
    t.match((await h.status('m_del')).json(), { status: 'connected', last_refreshed_at: null })
    const o = await other.app.inject({ url: '/internal/v1/merchants/m_del/access-token', headers: other.auth })
    t.equal(o.statusCode, 200)
    t.equal(o.json().access_token, res.json().access_token)
  })
  await h.assertNoRefreshTokenLeaked(t, ['m_del', 'm_keep'])
})

async function expectReauthorization (t: Test, h: Harness, mid: string, healthy: () => void): Promise<void> {
  const refreshesBefore = refreshRequests(h.b)
  t.equal(refreshesBefore, 1, 'one refresh attempt was made')
  const st = await h.status(mid)
  t.equal(st.statusCode, 200)
  t.equal(st.json().status, 'reauthorization_required')
  healthy()
  h.advance(2000)
  for (let i = 0; i < 3; i++) {
    const res = await h.lookup(mid)
    t.equal(res.statusCode, 409, 'still 409 with CyberSource healthy')
    t.equal(errorCode(res), 'reauthorization_required')
  }
  const forced = await h.call('POST', `/internal/v1/merchants/${mid}/refresh`)
  t.equal(forced.statusCode, 409, 'forced refresh: 409')
  t.equal(errorCode(forced), 'reauthorization_required')
  t.equal((await h.status(mid)).json().status, 'reauthorization_required')
  const listed = (await h.call('GET', '/internal/v1/merchants')).json().items.find((i: { merchant_id: string }) => i.merchant_id === mid)
  t.equal(listed?.status, 'reauthorization_required', 'the list agrees')
  t.equal(refreshRequests(h.b), refreshesBefore, 'CyberSource is not asked again with a dead refresh token')

  await h.onboard(mid)
  t.equal((await h.status(mid)).json().status, 'connected', 'a new onboarding connects it again')
  const res = await h.lookup(mid)
  t.equal(res.statusCode, 200, `lookup after the new onboarding: ${said(res)}`)
  t.equal(res.json().access_token, (await stored(h, mid)).accessToken)
  t.ok(res.json().expires_in > 800)
}

t.test('a refresh answer without refresh_token keeps the stored refresh token', async t => {
  // CyberSource may leave refresh_token (and its lifetime) out of a refresh answer: the old one stands.
  const strip = { on: false }
  const h = await harness(t, {
    beforeListen: sim => sim.app.addHook('onSend', async (request, _reply, payload) => {
      const form = request.body as Record<string, unknown> | undefined
      if (!strip.on || form?.grant_type !== 'refresh_token' || typeof payload !== 'string') return payload
      const { refresh_token: _rt, refresh_token_expires_in: _exp, ...rest } = JSON.parse(payload) as Record<string, unknown>
      return JSON.stringify(rest)
    })
  })
  await h.onboard('m_no_rt')
  const onboarded = await stored(h, 'm_no_rt')
  strip.on = true

  h.advance(60_000)
  const forced = await h.call('POST', '/internal/v1/merchants/m_no_rt/refresh')
  t.equal(forced.statusCode, 200, `forced refresh: ${said(forced)}`)
  const afterForced = await stored(h, 'm_no_rt')
  t.not(afterForced.accessToken, onboarded.accessToken, 'a new access token is stored')
  t.equal(afterForced.refreshToken, onboarded.refreshToken, 'the stored refresh token is the old one, and it decrypts')
  t.equal(afterForced.refreshTokenExpiresAt, onboarded.refreshTokenExpiresAt, 'with its old expiry')
  t.equal(forced.json().refresh_token_expires_at, new Date(onboarded.refreshTokenExpiresAt).toISOString())

  // The same through a lookup that has to refresh first.
  h.advance(NEARLY_EXPIRED_MS)
  const looked = await h.lookup('m_no_rt')
  t.equal(looked.statusCode, 200, `lookup: ${said(looked)}`)
  const afterLookup = await stored(h, 'm_no_rt')
  t.not(afterLookup.accessToken, afterForced.accessToken, 'refreshed again')
  t.equal(looked.json().access_token, afterLookup.accessToken)
  t.equal(afterLookup.refreshToken, onboarded.refreshToken, 'still the old refresh token')
  t.equal(h.b.sim.control.stats().refreshes, 2)

  // CyberSource still honours it: a later refresh works and sends it.
  strip.on = false
  h.advance(60_000)
  const later = await h.call('POST', '/internal/v1/merchants/m_no_rt/refresh')
  t.equal(later.statusCode, 200, `a later refresh: ${said(later)}`)
  const sent = h.b.sim.control.requests().filter(r => r.form.grant_type === 'refresh_token')
  t.same(sent.map(r => r.form.refresh_token === onboarded.refreshToken), [true, true, true], 'every refresh sent the original refresh token')
  t.equal(h.b.sim.control.stats().refreshes, 3)
  t.equal((await h.status('m_no_rt')).json().status, 'connected')
  await h.assertNoRefreshTokenLeaked(t, ['m_no_rt'])
})

t.test('a refresh token expired by time → reauthorization_required, and CyberSource is not asked', async t => {
  const h = await harness(t, { sim: { refreshTokenTtlSeconds: 3600 } })
  await h.onboard('m_rt_expired')
  const rec = await stored(h, 'm_rt_expired')
  t.equal((await h.lookup('m_rt_expired')).statusCode, 200, 'the token is cached before the clock moves')
  h.advance(rec.refreshTokenExpiresAt - h.now() + 1000)

  const st = await h.status('m_rt_expired')
  t.equal(st.statusCode, 200, said(st))
  t.equal(st.json().status, 'reauthorization_required', 'the status says so')
  for (let i = 0; i < 3; i++) {
    const res = await h.lookup('m_rt_expired')
    t.equal(res.statusCode, 409, `lookup ${i}: ${said(res)}`)
    t.equal(errorCode(res), 'reauthorization_required')
  }
  const forced = await h.call('POST', '/internal/v1/merchants/m_rt_expired/refresh')
  t.equal(forced.statusCode, 409, `forced refresh: ${said(forced)}`)
  t.equal(errorCode(forced), 'reauthorization_required')
  const listed = (await h.call('GET', '/internal/v1/merchants')).json().items.find((i: { merchant_id: string }) => i.merchant_id === 'm_rt_expired')
  t.equal(listed?.status, 'reauthorization_required', 'the list agrees')
  t.same(h.b.sim.control.requests().filter(r => r.form.grant_type === 'refresh_token'), [], 'no token request was sent with the expired refresh token')

  await h.onboard('m_rt_expired')
  const again = await h.lookup('m_rt_expired')
  t.equal(again.statusCode, 200, `a new onboarding connects it again: ${said(again)}`)
  t.equal((await h.status('m_rt_expired')).json().status, 'connected')
})

t.test('a refresh token that expires before the access token is due: 409 on every replica, the one that cached it too', async t => {
  // Refresh answers that leave out refresh_token_expires_in keep the old expiry, so an active
  // merchant can reach it with a fresh access token in hand.
  const h = await harness(t, { sim: { refreshTokenTtlSeconds: 300 } })
  const other = await build(t, { redis: h.b.redis, simulator: h.b.sim, secrets: h.b.secrets, now: h.now })
  await h.onboard('m_rt_first')
  t.equal((await h.lookup('m_rt_first')).statusCode, 200, 'cached on this replica')
  h.advance(301_000)
  t.equal((await h.status('m_rt_first')).json().status, 'reauthorization_required', 'the status says so')
  const cold = await other.app.inject({ url: '/internal/v1/merchants/m_rt_first/access-token', headers: other.auth })
  t.equal(cold.statusCode, 409, `a replica without the token cached: ${said(cold)}`)
  const warm = await h.lookup('m_rt_first')
  t.equal(warm.statusCode, 409, `the replica with the token cached: ${said(warm)}`)
  t.equal(errorCode(warm), 'reauthorization_required')
  t.equal(refreshRequests(h.b), 0, 'no token request')
})

t.test('refresh token rejected → 409 reauthorization_required until a new onboarding', async t => {
  await t.test('revoked at CyberSource', async t => {
    const h = await harness(t)
    await h.onboard('m_revoked')
    t.equal((await h.lookup('m_revoked')).statusCode, 200)
    t.equal(h.b.sim.control.revokeRefreshTokens('m_revoked'), 1)
    h.advance(NEARLY_EXPIRED_MS)
    const res = await h.lookup('m_revoked')
    t.equal(res.statusCode, 409, said(res))
    t.equal(errorCode(res), 'reauthorization_required')
    await expectReauthorization(t, h, 'm_revoked', () => {})
    await h.assertNoRefreshTokenLeaked(t, ['m_revoked'])
  })

  await t.test('invalid_grant fault (HTTP 400 and HTTP 500)', async t => {
    for (const oauthErrorStatus of [400, 500]) {
      const h = await harness(t, { sim: { oauthErrorStatus } })
      const mid = `m_grant_${oauthErrorStatus}`
      await h.onboard(mid)
      t.equal((await h.lookup(mid)).statusCode, 200)
      h.b.sim.control.setBehavior({ fault: 'invalid_grant', grantType: 'refresh_token' })
      h.advance(NEARLY_EXPIRED_MS)
      const res = await h.lookup(mid)
      t.equal(res.statusCode, 409, `${oauthErrorStatus}: ${said(res)}`)
      t.equal(errorCode(res), 'reauthorization_required')
      await expectReauthorization(t, h, mid, () => h.b.sim.control.setBehavior({}))
    }
  })

  await t.test('rejected during a background refresh: the token in hand is still served, then 409', async t => {
    const h = await harness(t)
    await h.onboard('m_bg_revoked')
    const token = (await h.lookup('m_bg_revoked')).json().access_token
    h.b.sim.control.revokeRefreshTokens('m_bg_revoked')
    h.advance(PAST_REFRESH_POINT_MS)
    const first = await h.lookup('m_bg_revoked')
    t.equal(first.statusCode, 200, 'answered at once with the current token')
    t.equal(first.json().access_token, token)
    t.ok(await until(async () => (await h.status('m_bg_revoked')).json().status === 'reauthorization_required', 5000), 'marked after the background refresh')
    const res = await h.lookup('m_bg_revoked')
    t.equal(res.statusCode, 409)
    t.equal(errorCode(res), 'reauthorization_required')
  })
})

t.test('CyberSource unavailable', async t => {
  for (const fault of ['error_500_empty', 'drop', 'error_502_html', 'error_500_oauth'] as const) {
    await t.test(fault, async t => {
      const h = await harness(t)
      await h.onboard('m_down')
      const old = (await h.lookup('m_down')).json()
      h.b.sim.control.setBehavior({ fault, grantType: 'refresh_token' })

      // Past the refresh point with 180 s left: the current token is served.
      h.advance(PAST_REFRESH_POINT_MS)
      const res = await h.lookup('m_down')
      t.equal(res.statusCode, 200, said(res))
      t.equal(res.json().access_token, old.access_token)
      t.ok(res.json().expires_in >= 170 && res.json().expires_in <= 180, `expires_in ${res.json().expires_in}`)
      t.ok(await until(() => refreshRequests(h.b) >= 1, 5000), 'a background refresh was attempted')
      for (let i = 0; i < 5; i++) {
        const again = await h.lookup('m_down')
        t.equal(again.statusCode, 200)
        t.equal(again.json().access_token, old.access_token)
      }
      t.equal((await h.status('m_down')).json().status, 'connected')

      // < 60 s left: nothing valid to serve.
      h.advance(NEARLY_EXPIRED_MS - PAST_REFRESH_POINT_MS)
      const down = await h.lookup('m_down')
      t.equal(down.statusCode, 503, said(down))
      t.equal(errorCode(down), 'upstream_unavailable')
      t.notOk(down.body.includes(old.access_token))
      const forced = await h.call('POST', '/internal/v1/merchants/m_down/refresh')
      t.equal(forced.statusCode, 503, 'forced refresh: 503')
      t.equal(errorCode(forced), 'upstream_unavailable')
      t.equal((await h.status('m_down')).json().status, 'connected', 'still connected')
      t.equal(h.b.sim.control.stats().refreshes, 0)
      t.equal((await stored(h, 'm_down')).accessToken, old.access_token, 'the stored pair is untouched')

      // CyberSource is back; the service holds a failure for 1 s per merchant.
      h.b.sim.control.setBehavior({})
      h.advance(1100)
      const back = await h.lookup('m_down')
      t.equal(back.statusCode, 200, said(back))
      t.not(back.json().access_token, old.access_token, 'a new token')
      t.ok(back.json().expires_in >= 895, `a full lifetime (${back.json().expires_in})`)
      t.equal(h.b.sim.control.stats().refreshes, 1, 'exactly one successful refresh')
      await h.assertNoRefreshTokenLeaked(t, ['m_down'])
    })
  }
})

t.test('partner credentials rejected (invalid_client) → 503, error log, merchant stays connected', async t => {
  const h = await harness(t)
  await h.onboard('m_client')
  const old = (await h.lookup('m_client')).json()
  h.b.sim.control.setBehavior({ fault: 'invalid_client', grantType: 'refresh_token' })
  h.advance(NEARLY_EXPIRED_MS)
  const res = await h.lookup('m_client')
  t.equal(res.statusCode, 503, said(res))
  t.equal(errorCode(res), 'upstream_unavailable')
  const errors = h.b.logs.lines().filter(l => l.level === 50 && /partner credentials/.test(String(l.msg)))
  t.equal(errors.length, 1, 'one error-level line about the partner credentials')
  t.match(errors[0], { merchant_id: 'm_client', oauth_error: 'invalid_client' })
  t.notOk(h.b.logs.text().includes(h.b.secrets.clientSecret), 'the client secret is not logged')
  t.equal((await h.status('m_client')).json().status, 'connected', 'not the merchant\'s fault')
  t.equal(refreshRequests(h.b), 1, 'invalid_client is not retried')

  h.b.sim.control.setBehavior({})
  h.advance(1100)
  const back = await h.lookup('m_client')
  t.equal(back.statusCode, 200, said(back))
  t.not(back.json().access_token, old.access_token)
  t.equal(h.b.sim.control.stats().refreshes, 1)
})

/**
 * A token endpoint in front of the simulator that answers refresh requests with an OAuth error of
 * our choosing (the simulator only produces invalid_grant, invalid_client and server_error);
 * everything else is passed through.
 */
async function oauthErrorFront (t: Test): Promise<{ tokenUrl: string, target: { sim?: Simulator }, refreshError: { error?: string }, refreshes: () => number }> {
  const target: { sim?: Simulator } = {}
  const refreshError: { error?: string } = {}
  let refreshes = 0
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString()
      if (refreshError.error !== undefined && new URLSearchParams(body).get('grant_type') === 'refresh_token') {
        refreshes++
        res.writeHead(400, { 'content-type': 'application/json;charset=UTF-8', 'cache-control': 'no-store' })
        res.end(JSON.stringify({ error: refreshError.error, error_description: 'simulated' }))
        return
      }
      if (target.sim === undefined) throw new Error('no simulator behind the front')
      target.sim.app.inject({ method: 'POST', url: TOKEN_PATH, headers: { 'content-type': String(req.headers['content-type']) }, payload: body })
        .then(r => {
          res.writeHead(r.statusCode, { 'content-type': String(r.headers['content-type']) })
          res.end(r.body)
        }, (err: unknown) => { res.writeHead(502); res.end(String(err)) })
    })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => await new Promise<void>(resolve => { server.closeAllConnections(); server.close(() => resolve()) }))
  const { port } = server.address() as { port: number }
  return { tokenUrl: `http://127.0.0.1:${port}${TOKEN_PATH}`, target, refreshError, refreshes: () => refreshes }
}

t.test('only invalid_grant marks the merchant', async t => {
  /** The due (background) refresh fails, then the lookup with < 60 s left fails too: 503 and still connected. */
  async function expectNotMarked (t: Test, h: Harness, mid: string, attempted: () => number, failedLine: RegExp): Promise<void> {
    const old = (await h.lookup(mid)).json()
    h.advance(PAST_REFRESH_POINT_MS)
    const due = await h.lookup(mid)
    t.equal(due.statusCode, 200, 'the due refresh runs in the background; the current token is served')
    t.equal(due.json().access_token, old.access_token)
    t.ok(await until(() => h.b.logs.lines().some(l => l.merchant_id === mid && failedLine.test(String(l.msg))), 10_000), 'the background refresh failed')
    t.ok(attempted() >= 1, 'it reached the token endpoint')
    t.equal((await h.status(mid)).json().status, 'connected', 'after the due refresh failed: still connected')
    t.notOk(h.b.logs.lines().some(l => l.merchant_id === mid && /must authorize again/.test(String(l.msg))), 'no reauthorization logged')

    h.advance(NEARLY_EXPIRED_MS - PAST_REFRESH_POINT_MS)
    const down = await h.lookup(mid)
    t.equal(down.statusCode, 503, `< 60 s left: ${said(down)}`)
    t.equal(errorCode(down), 'upstream_unavailable')
    t.notOk(down.body.includes(old.access_token))
    t.equal((await h.status(mid)).json().status, 'connected', 'still connected')
    const forced = await h.call('POST', `/internal/v1/merchants/${mid}/refresh`)
    t.equal(forced.statusCode, 503, 'forced refresh: 503')
    t.equal(errorCode(forced), 'upstream_unavailable')
    const listed = (await h.call('GET', '/internal/v1/merchants')).json().items.find((i: { merchant_id: string }) => i.merchant_id === mid)
    t.equal(listed?.status, 'connected', 'the list agrees')
    t.equal((await stored(h, mid)).status, 'connected', 'the stored record is not marked')
  }

  for (const [fault, failedLine] of [['error_500_oauth', /CyberSource unavailable/], ['invalid_client', /partner credentials/]] as const) {
    await t.test(`${fault} on a due refresh: 503 once < 60 s are left, still connected`, async t => {
      const h = await harness(t)
      const mid = `m_only_${fault}`
      await h.onboard(mid)
      h.b.sim.control.setBehavior({ fault, grantType: 'refresh_token' })
      await expectNotMarked(t, h, mid, () => refreshRequests(h.b), failedLine)
      h.b.sim.control.setBehavior({})
      h.advance(1100)
      const back = await h.lookup(mid)
      t.equal(back.statusCode, 200, `recovers once CyberSource answers: ${said(back)}`)
      t.equal(h.b.sim.control.stats().refreshes, 1)
    })
  }

  for (const oauthError of ['invalid_request', 'unauthorized_client', 'unsupported_grant_type', 'invalid_scope', 'access_denied', 'a_new_error']) {
    await t.test(`${oauthError} (not the merchant's grant): 503, still connected`, async t => {
      const front = await oauthErrorFront(t)
      const h = await harness(t, { env: { CYBS_TOKEN_URL: front.tokenUrl } })
      front.target.sim = h.b.sim
      const mid = 'm_only_other'
      await h.onboard(mid)
      front.refreshError.error = oauthError
      await expectNotMarked(t, h, mid, front.refreshes, /CyberSource rejected/)
      const line = h.b.logs.lines().find(l => l.merchant_id === mid && /CyberSource rejected/.test(String(l.msg)))
      t.match(line, { level: 50, oauth_error: oauthError }, 'an error-level line names the OAuth error')
      front.refreshError.error = undefined
      h.advance(1100)
      const back = await h.lookup(mid)
      t.equal(back.statusCode, 200, `recovers: ${said(back)}`)
      t.equal(h.b.sim.control.stats().refreshes, 1)
    })
  }

  await t.test('invalid_grant on a due refresh: reauthorization_required, 409', async t => {
    const h = await harness(t)
    await h.onboard('m_only_grant')
    const old = (await h.lookup('m_only_grant')).json()
    h.b.sim.control.setBehavior({ fault: 'invalid_grant', grantType: 'refresh_token' })
    h.advance(PAST_REFRESH_POINT_MS)
    const due = await h.lookup('m_only_grant')
    t.equal(due.statusCode, 200, 'the token in hand is served while the refresh runs')
    t.equal(due.json().access_token, old.access_token)
    t.ok(await until(async () => (await h.status('m_only_grant')).json().status === 'reauthorization_required', 5000), 'marked')
    const res = await h.lookup('m_only_grant')
    t.equal(res.statusCode, 409, said(res))
    t.equal(errorCode(res), 'reauthorization_required')
    t.equal(refreshRequests(h.b), 1, 'one refresh attempt')
  })
})

t.test('Redis down', async t => {
  const redis = await startRedis(t, ['--appendonly', 'yes', '--appendfsync', 'always'])
  const h = await harness(t, { redis })
  await h.onboard('m_redis')
  await h.onboard('m_redis_cold')
  const token = (await h.lookup('m_redis')).json().access_token
  t.equal((await h.b.app.inject({ url: '/health/ready' })).statusCode, 200)

  await redis.stop()
  t.ok(await until(async () => (await h.b.app.inject({ url: '/health/ready' })).statusCode === 503, 3000), 'readiness reports the outage')
  const hot = await h.lookup('m_redis')
  t.equal(hot.statusCode, 200, 'a cached fresh token is still served')
  t.equal(hot.json().access_token, token)
  const expect503 = async (res: { statusCode: number, body: string }, what: string): Promise<void> => {
    t.equal(res.statusCode, 503, `${what}: ${said(res)}`)
    t.equal(errorCode(res), 'storage_unavailable', what)
  }
  await expect503(await h.status('m_redis'), 'status')
  await expect503(await h.lookup('m_redis_cold'), 'lookup of a token not in memory')
  await expect503(await h.lookup('m_unknown'), 'lookup of an unknown merchant')
  await expect503(await h.call('GET', '/internal/v1/merchants'), 'list')
  await expect503(await h.call('POST', '/internal/v1/merchants/m_redis/refresh'), 'forced refresh')
  await expect503(await h.call('DELETE', '/internal/v1/merchants/m_redis'), 'delete')
  const link = await h.b.app.inject({ method: 'POST', url: '/internal/v1/onboarding-links', headers: h.b.auth, payload: {} })
  await expect503(link, 'onboarding link')
  t.equal((await h.b.app.inject({ url: '/health/live' })).statusCode, 200, 'the process stays up')
  t.equal(h.b.sim.control.stats().refreshes, 0, 'no refresh while storage is down')

  await redis.start()
  t.ok(await until(async () => (await h.status('m_redis')).statusCode === 200, 5000), 'the status route recovers')
  t.ok(await until(async () => (await h.b.app.inject({ url: '/health/ready' })).statusCode === 200, 5000), 'ready again')
  t.equal((await h.status('m_redis')).json().status, 'connected', 'nothing was lost')
  t.equal((await h.lookup('m_redis_cold')).statusCode, 200)
  t.equal((await h.lookup('m_redis')).json().access_token, token)
  const del = await h.call('DELETE', '/internal/v1/merchants/m_redis_cold')
  t.equal(del.statusCode, 204, 'the delete that failed works now')
})

t.test('Redis down while a refresh is due → 503 storage_unavailable, then it refreshes', async t => {
  const redis = await startRedis(t, ['--appendonly', 'yes', '--appendfsync', 'always'])
  const h = await harness(t, { redis })
  await h.onboard('m_redis_due')
  const token = (await h.lookup('m_redis_due')).json().access_token
  await redis.stop()
  h.advance(NEARLY_EXPIRED_MS)
  const res = await h.lookup('m_redis_due')
  t.equal(res.statusCode, 503, said(res))
  t.equal(errorCode(res), 'storage_unavailable')
  t.notOk(res.body.includes(token))
  await redis.start()
  t.ok(await until(async () => (await h.lookup('m_redis_due')).statusCode === 200, 5000), 'recovers')
  const after = await h.lookup('m_redis_due')
  t.not(after.json().access_token, token, 'a new token after recovery')
  t.equal(h.b.sim.control.stats().refreshes, 1)
})
