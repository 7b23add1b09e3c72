// Property-based fuzzing of the internal API, the health and metrics routes, the API document and
// unknown paths: generated hostile paths, query strings, credentials, correlation ids and bodies,
// through app.inject, against one app on a private Redis and the simulator with three merchants
// onboarded. The harness (harness.ts) checks what every answer and log line must hold; each route
// here adds its oracle (the answer the input calls for). Refreshes and deletes never name an
// onboarded merchant, so every record must come out of the run field for field as it went in.
import t from 'tap'
import fc from 'fast-check'
import { createKeyRing } from '../../src/key-ring.js'
import {
  authCase, authorization, bodyCase, bodyText, contentType, correlationCase, encodeQuery, hostileText, merchantIdText,
  queryEncoding, queryPairs, queryString, queryValue, segment, spelledPath,
  type AuthCase, type QueryPair, type Segment
} from './arbitraries.js'
import {
  CORRELATION_ID, ID_PATTERN, REAL, checkEndState, errorCode, must, property, printable, setup,
  Harness, type Answer, type Fuzz, type Request
} from './harness.js'

/** Cases per property; every property sends one to three requests per case. */
const RUNS = Number(process.env.FUZZ_RUNS ?? 2000)

interface Common { auth: AuthCase, cid: string | undefined, query: QueryPair[], enc: { mask: number, plus: boolean } }
const common = (query = queryPairs()): fc.Arbitrary<Common> => fc.record({ auth: authCase, cid: correlationCase, query, enc: queryEncoding })

interface Extra { payload?: string, contentType?: string, unloggable?: string[], generated?: string[] }

/** The request of a generated case, and whether its credentials are a configured secret. */
function request (f: Fuzz, c: Common, method: Request['method'], path: string, extra: Extra = {}): { r: Request, authValid: boolean } {
  const a = authorization(c.auth, f.h.credentials)
  const headers: Record<string, string> = {}
  if (a.value !== undefined) headers.authorization = a.value
  if (c.cid !== undefined) headers['x-correlation-id'] = c.cid
  if (extra.contentType !== undefined) headers['content-type'] = extra.contentType
  const unloggable = [...(extra.unloggable ?? [])]
  // A wrong credential is nearly a right one: neither it nor its secret part is ever logged.
  if (a.presented !== undefined) unloggable.push(a.presented, a.presented.slice(a.presented.indexOf(' ') + 1))
  if (c.cid !== undefined && !CORRELATION_ID.test(c.cid)) unloggable.push(c.cid)
  return {
    r: {
      method,
      url: path + queryString(c.query, c.enc.mask, c.enc.plus),
      headers,
      payload: extra.payload,
      unloggable,
      generated: [...c.query.flatMap(p => [p.key, p.value ?? '']), c.cid ?? '', ...(extra.generated ?? [])],
      correlationId: c.cid
    },
    authValid: a.valid
  }
}

interface Want { status: number, code?: string }

function expect (r: Request, a: Answer, wants: Want[]): void {
  const ok = wants.some(w => w.status === a.status && (w.code === undefined || r.method === 'HEAD' || errorCode(a) === w.code))
  must(ok, `${Harness.where(r, a)} ${printable(errorCode(a) ?? '')}: expected ${wants.map(w => `${w.status} ${w.code ?? ''}`.trim()).join(' or ')}`)
}

const invalidRequest = (status = 400): Want => ({ status, code: 'invalid_request' })

/**
 * What a route with a :merchantId answers, in the order Fastify gets there: the router (an
 * undecodable or over-long parameter), the URL bound, the bearer guard, the body, validation,
 * the handler.
 */
function idOracle (seg: Segment, r: Request, authValid: boolean, known: boolean, bodyMayFail = false): Want[] {
  // The router's bound (maxParamLength) is on the decoded parameter.
  if (seg.text === undefined || seg.text.length > 128) return [invalidRequest()]
  if (r.url.length > 8192) return [invalidRequest(414)]
  if (!authValid) return [{ status: 401, code: 'unauthorized' }]
  const body = bodyMayFail ? [invalidRequest(), invalidRequest(413), invalidRequest(415)] : []
  if (!ID_PATTERN.test(seg.text)) return [invalidRequest(), ...body]
  return [known ? { status: r.method === 'DELETE' ? 204 : 200 } : { status: 404, code: 'merchant_not_found' }, ...body]
}

/** An invalid id, in every form it took, must never be logged. */
const idUnloggable = (seg: Segment): string[] =>
  seg.text !== undefined && ID_PATTERN.test(seg.text) ? [] : [seg.raw, ...(seg.text === undefined ? [] : [seg.text])]

const STATUS_FIELDS = 'access_token_expires_at,client_status,connected_at,last_refreshed_at,merchant_id,refresh_token_expires_at,scope,status'

t.test('internal API under generated input', async t => {
  const f = await setup(t)
  const real = (text: string | undefined): boolean => text !== undefined && REAL.includes(text)

  await t.test('GET and HEAD /internal/v1/merchants/:merchantId/access-token', async t => {
    const arb = fc.record({ c: common(), seg: segment(merchantIdText(REAL)) })
    await property(t, 'access-token', arb, async ({ c, seg }) => {
      for (const method of ['GET', 'HEAD'] as const) {
        const { r, authValid } = request(f, c, method, `/internal/v1/merchants/${seg.raw}/access-token`, { unloggable: idUnloggable(seg), generated: [seg.text ?? ''] })
        const a = await f.h.send(r)
        expect(r, a, idOracle(seg, r, authValid, real(seg.text)))
        if (a.status !== 200) continue
        must(a.headers['cache-control'] === 'no-store', `${Harness.where(r, a)}: cacheable token`)
        if (method === 'HEAD') continue
        const body = a.json as Record<string, unknown>
        must(body.merchant_id === seg.text && body.token_type === 'Bearer' && typeof body.expires_in === 'number' && body.expires_in >= 60, `${Harness.where(r, a)}: token fields`)
        must(f.h.opts.tokens.has(String(body.access_token)), `${Harness.where(r, a)}: a token the simulator did not issue`)
      }
    }, { numRuns: RUNS })
  })

  await t.test('GET /internal/v1/merchants/:merchantId', async t => {
    const arb = fc.record({ c: common(), seg: segment(merchantIdText(REAL)).filter(s => s.raw !== '') })
    await property(t, 'status', arb, async ({ c, seg }) => {
      const { r, authValid } = request(f, c, 'GET', `/internal/v1/merchants/${seg.raw}`, { unloggable: idUnloggable(seg), generated: [seg.text ?? ''] })
      const a = await f.h.send(r)
      expect(r, a, idOracle(seg, r, authValid, real(seg.text)))
      if (a.status === 200) {
        const body = a.json as Record<string, unknown>
        must(Object.keys(body).sort().join(',') === STATUS_FIELDS && body.merchant_id === seg.text && body.status === 'connected', `${Harness.where(r, a)}: status fields`)
      }
    }, { numRuns: RUNS })
  })

  await t.test('GET /internal/v1/merchants?limit=&cursor=', async t => {
    const keys = ['limit', 'limit', 'limit', 'cursor', 'limit[]', 'a[]', '__proto__', 'constructor[prototype][polluted]', 'merchant_id']
    const arb = fc.record({ c: common(queryPairs(keys, 4)), path: spelledPath('/internal/v1/merchants') })
    await property(t, 'list', arb, async ({ c, path }) => {
      const { r, authValid } = request(f, c, 'GET', path)
      const a = await f.h.send(r)
      const limits = c.query.filter(p => p.key === 'limit')
      const cursor = c.query.some(p => p.key === 'cursor')
      // Query values are coerced (" 5", "1e2" and "0x10" are numbers); the number must be an integer of 1-500.
      // Digits only ('1e2' and 'Infinity' are numbers to Ajv's coercion, not to this API).
      const n = Number(limits[0]?.value ?? '')
      const good = limits.length === 0 || (limits.length === 1 && /^[0-9]{1,3}$/.test(limits[0].value ?? '') && n >= 1 && n <= 500)
      const wants = r.url.length > 8192
        ? [invalidRequest(414)]
        : !authValid
            ? [{ status: 401, code: 'unauthorized' }]
            // A cursor the service did not issue is refused; a plain limit is served.
            : cursor || !good ? [invalidRequest()] : [{ status: 200 }]
      expect(r, a, wants)
      if (a.status === 200) {
        const body = a.json as { items: Array<{ merchant_id: string }>, next_cursor: unknown }
        const ids = body.items.map(i => i.merchant_id)
        must(ids.every(id => REAL.includes(id)) && new Set(ids).size === ids.length, `${Harness.where(r, a)}: listed merchants ${printable(ids.join(','))}`)
        must(body.next_cursor === null || typeof body.next_cursor === 'string', `${Harness.where(r, a)}: next_cursor`)
      }
    }, {
      numRuns: RUNS,
      examples: [
        // Ajv coerces "Infinity" (and "1e400") to a number that passes `integer` and `maximum`;
        // SCAN then refuses COUNT Infinity and the list answers 500.
        { c: { auth: { kind: 'valid', caller: 'payments', scheme: 'Bearer' }, cid: undefined, query: [{ key: 'limit', value: 'Infinity' }], enc: { mask: 0, plus: false } }, path: '/internal/v1/merchants' },
        // "-Infinity" passes `minimum` too: a 200 with a next_cursor for the position "0:0:-Infinity".
        { c: { auth: { kind: 'valid', caller: 'payments', scheme: 'Bearer' }, cid: undefined, query: [{ key: 'limit', value: '-Infinity' }], enc: { mask: 0, plus: false } }, path: '/internal/v1/merchants' }
      ]
    })
  })

  await t.test('list cursors the service did not issue are refused with 400', async t => {
    // Cursors the service issued: every page of the list, by one and by two.
    const issued: string[] = []
    for (const limit of [1, 2]) {
      let cursor: string | null = null
      do {
        const res: { statusCode: number, json: () => unknown } = await f.b.app.inject({ url: `/internal/v1/merchants?limit=${limit}${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`, headers: f.b.auth })
        t.equal(res.statusCode, 200, 'a page of the list')
        cursor = (res.json() as { next_cursor: string | null }).next_cursor
        if (cursor !== null) issued.push(cursor)
      } while (cursor !== null && issued.length < 10)
    }
    t.ok(issued.length >= 2, 'the service issued cursors')
    // Cursors sealed with the service's own key: what only a leaked key could make.
    const keyRing = createKeyRing(f.b.config.encryptionKeys)
    t.ok(issued.includes(keyRing.seal('list-cursor', '0:0:1')), 'the test seals cursors as the service does')

    type CursorCase =
      | { kind: 'issued', i: number }
      | { kind: 'modified', i: number, op: 'truncate' | 'append' | 'replace' | 'insert' | 'drop' | 'case', at: number, ch: string }
      | { kind: 'random', text: string }
      | { kind: 'unsealed', payload: string, mac: string | undefined }
      | { kind: 'sealed', payload: string }
    const ch = fc.oneof(fc.constantFrom('=', '.', '\n', ' ', 'A', 'a', 'Q', 'w', '-', '_', '%', '+', '/', '\u2028', '0', '=='), fc.string({ minLength: 1, maxLength: 2 }))
    const payload = fc.oneof(
      fc.tuple(fc.constantFrom('0', '1', '9999', '00', '-0'), fc.oneof(fc.bigInt({ min: 0n, max: 10n ** 25n }).map(String), fc.constantFrom('18446744073709551615', '18446744073709551616', '99999999999999999999', '99999999999999999999999')), fc.oneof(fc.nat(2_000_000).map(String), fc.constant('-1')))
        .map(([n, s, k]) => `${n}:${s}:${k}`),
      hostileText
    )
    const cursorCase: fc.Arbitrary<CursorCase> = fc.oneof(
      fc.record({ kind: fc.constant('issued' as const), i: fc.nat(issued.length - 1) }),
      { weight: 4, arbitrary: fc.record({ kind: fc.constant('modified' as const), i: fc.nat(issued.length - 1), op: fc.constantFrom('truncate' as const, 'append' as const, 'replace' as const, 'insert' as const, 'drop' as const, 'case' as const), at: fc.nat(60), ch }) },
      fc.record({ kind: fc.constant('random' as const), text: hostileText }),
      fc.record({ kind: fc.constant('unsealed' as const), payload, mac: fc.option(fc.base64String({ minLength: 20, maxLength: 24 }).map(s => s.replace(/\+/g, '-').replace(/\//g, '_')), { nil: undefined }) }),
      fc.record({ kind: fc.constant('sealed' as const), payload })
    )
    const cursorOf = (c: CursorCase): string => {
      switch (c.kind) {
        case 'issued': return issued[c.i]
        case 'random': return c.text
        case 'unsealed': return Buffer.from(c.payload).toString('base64url') + (c.mac === undefined ? '' : `.${c.mac}`)
        case 'sealed': return keyRing.seal('list-cursor', c.payload)
        case 'modified': {
          const s = issued[c.i]
          const at = c.at % (s.length + 1)
          const flip = (x: string): string => x === x.toLowerCase() ? x.toUpperCase() : x.toLowerCase()
          return {
            truncate: s.slice(0, at),
            append: s + c.ch,
            replace: s.slice(0, at) + c.ch + s.slice(at + 1),
            insert: s.slice(0, at) + c.ch + s.slice(at),
            drop: s.slice(0, at) + s.slice(at + 1),
            case: s.slice(0, at) + flip(s.slice(at, at + 1)) + s.slice(at + 1)
          }[c.op]
        }
      }
    }
    /** A sealed payload names a real position only as node 0 and a SCAN cursor Redis takes (64 bits). */
    const servable = (payload: string): boolean => {
      const m = /^(\d{1,4}):(\d{1,20}):(\d{1,6})$/.exec(payload)
      return m !== null && Number(m[1]) === 0 && BigInt(m[2]) < 2n ** 64n
    }
    const arb = fc.record({ cursor: cursorCase, limit: fc.constantFrom(undefined, '1', '2', '500'), cid: correlationCase })
    const regressions: Array<{ cursor: CursorCase, limit: '1' | '2' | '500' | undefined, cid: string | undefined }> = [
      // Forged and damaged cursors that are refused (kept as fixed cases of what must stay so).
      { cursor: { kind: 'unsealed', payload: '0:99999999999999999999999:0', mac: undefined }, limit: '1', cid: undefined },
      { cursor: { kind: 'modified', i: 0, op: 'truncate', at: 10, ch: '' }, limit: '1', cid: undefined },
      // The MAC is read with Buffer.from(…, 'base64url'), which ignores what it cannot decode.
      { cursor: { kind: 'modified', i: 0, op: 'append', at: 0, ch: '=' }, limit: '1', cid: undefined },
      // A sealed SCAN cursor past 2^64 - 1 reaches Redis, whose error answers 500.
      { cursor: { kind: 'sealed', payload: '0:18446744073709551616:0' }, limit: '1', cid: undefined }
    ]
    await property(t, 'cursors', arb, async ({ cursor, limit, cid }) => {
      const value = cursorOf(cursor)
      const query = `?${limit === undefined ? '' : `limit=${limit}&`}cursor=${encodeQuery(value)}`
      const headers: Record<string, string> = { ...f.b.auth, ...(cid === undefined ? {} : { 'x-correlation-id': cid }) }
      const r: Request = { method: 'GET', url: `/internal/v1/merchants${query}`, headers, unloggable: [], generated: [value], correlationId: cid }
      const a = await f.h.send(r)
      if (r.url.length > 8192) return expect(r, a, [invalidRequest(414)])
      const accepted = issued.includes(value) || (cursor.kind === 'sealed' && servable(cursor.payload))
      expect(r, a, [accepted ? { status: 200 } : invalidRequest()])
    }, { numRuns: RUNS, examples: regressions })
  })

  for (const method of ['POST', 'DELETE'] as const) {
    const route = method === 'POST' ? '/internal/v1/merchants/:merchantId/refresh' : '/internal/v1/merchants/:merchantId'
    await t.test(`${method} ${route}`, async t => {
      // Never an onboarded merchant: a refresh or delete of one would change what the run checks.
      const ids = merchantIdText([]).filter(id => !REAL.includes(id))
      const body = fc.option(fc.record({ body: bodyCase(ids), type: contentType }), { freq: 4, nil: undefined })
      const arb = fc.record({ c: common(), seg: segment(ids), body })
      await property(t, method === 'POST' ? 'refresh' : 'delete', arb, async ({ c, seg, body }) => {
        const path = route.replace(':merchantId', seg.raw)
        const payload = body === undefined ? undefined : bodyText(body.body)
        const { r, authValid } = request(f, c, method, path, { payload, contentType: body?.type, unloggable: idUnloggable(seg), generated: [seg.text ?? ''] })
        const a = await f.h.send(r)
        expect(r, a, idOracle(seg, r, authValid, false, body !== undefined))
      }, { numRuns: RUNS })
    })
  }

  await t.test('POST /internal/v1/onboarding-links', async t => {
    const ids = merchantIdText(REAL)
    const arb = fc.record({ c: common(queryPairs(undefined, 2)), path: spelledPath('/internal/v1/onboarding-links'), body: bodyCase(ids), type: contentType })
    const JSON_TYPES = ['application/json', 'application/json; charset=utf-8']
    /** The answer a JSON body calls for, read as the schema does. */
    const bodyOracle = (payload: string): Want => {
      if (Buffer.byteLength(payload) > 16 * 1024) return invalidRequest(413)
      const parsed = JSON.parse(payload) as unknown
      if (parsed === null) return { status: 201 }
      if (typeof parsed !== 'object' || Array.isArray(parsed)) return invalidRequest()
      const keys = Object.keys(parsed)
      if (keys.some(k => k !== 'merchant_id' && k !== 'reference')) return invalidRequest()
      const { merchant_id: mid, reference: ref } = parsed as { merchant_id?: unknown, reference?: unknown }
      const midOk = mid === undefined || (typeof mid === 'string' && ID_PATTERN.test(mid))
      const refOk = ref === undefined || (typeof ref === 'string' && [...ref].length <= 256 && /^\P{C}+$/u.test(ref))
      return midOk && refOk ? { status: 201 } : invalidRequest()
    }
    await property(t, 'onboarding links', arb, async ({ c, path, body, type }) => {
      const payload = bodyText(body)
      const given = body.kind === 'object' ? body.fields.find(([k]) => k === 'merchant_id')?.[1] : undefined
      const unloggable = [
        ...(typeof given === 'string' && !ID_PATTERN.test(given) ? [given] : []),
        ...(body.kind === 'text' ? [body.text] : [])
      ]
      const { r, authValid } = request(f, c, 'POST', path, { payload, contentType: type, unloggable, generated: typeof given === 'string' ? [given] : [] })
      const a = await f.h.send(r)
      const exact = type !== undefined && JSON_TYPES.includes(type) && payload !== undefined && body.kind !== 'text' && body.kind !== 'deep'
      // docs/api.md: the body is JSON; any other type of body is refused, never read as a link request.
      const json = type?.split(';')[0].trim().toLowerCase() === 'application/json'
      const refused = [invalidRequest(), invalidRequest(413), invalidRequest(415)]
      const wants = r.url.length > 8192
        ? [invalidRequest(414)]
        : !authValid
            ? [{ status: 401, code: 'unauthorized' }]
            : exact ? [bodyOracle(payload)] : payload !== undefined && payload !== '' && !json ? refused : [{ status: 201 }, ...refused]
      expect(r, a, wants)
      if (a.status !== 201) return
      const link = a.json as { id?: unknown, url?: unknown, expires_at?: unknown, merchant_id?: unknown }
      must(Object.keys(link).sort().join(',') === 'expires_at,id,merchant_id,reference,url' && typeof link.url === 'string' && typeof link.id === 'string', `${Harness.where(r, a)}: link fields`)
      // The URL passes through the service (which binds the browser), never straight to CyberSource.
      must(link.url.startsWith(`${f.b.config.publicBaseUrl}/oauth/links/${link.id}/`), `${Harness.where(r, a)}: link URL ${printable(link.url)}`)
      // The link is bound to a valid merchant id or to none.
      const record = await f.redis.hgetall(f.b.app.redisKeys.link(link.id))
      must(record.merchant_id === '' || ID_PATTERN.test(record.merchant_id ?? ''), `${Harness.where(r, a)}: a link bound to an invalid merchant id`)
      if (exact && typeof given === 'string') must(record.merchant_id === given && link.merchant_id === given, `${Harness.where(r, a)}: the link is bound to another merchant`)
    }, {
      numRuns: RUNS,
      examples: [
        // @fastify/formbody (registered for the whole app in src/app.ts) reads a form body as a
        // link request: a link is made, where docs/api.md promises 415.
        { c: { auth: { kind: 'valid', caller: 'payments', scheme: 'Bearer' }, cid: undefined, query: [], enc: { mask: 0, plus: false } }, path: '/internal/v1/onboarding-links', body: { kind: 'text', text: 'merchant_id=m_form_1' }, type: 'application/x-www-form-urlencoded' }
      ]
    })
  })

  await t.test('health, metrics, the API document and unknown paths', async t => {
    const BASES = ['/health/live', '/health/ready', '/metrics', '/docs/json', '/docs', '/internal', '/internal/v1', '/internal/v2/merchants', '/', '/favicon.ico', '/oauth', '/OAUTH/connect', '/internal/V1/merchants', '/health', '/metrics.json']
    const arb = fc.record({
      c: common(queryPairs(undefined, 3)),
      path: fc.constantFrom(...BASES).chain(p => spelledPath(p)),
      extra: fc.array(segment(hostileText), { maxLength: 2 }),
      method: fc.constantFrom('GET' as const, 'GET' as const, 'HEAD' as const, 'POST' as const, 'PUT' as const, 'DELETE' as const, 'PATCH' as const, 'OPTIONS' as const),
      body: fc.option(fc.record({ text: fc.oneof(hostileText, queryValue), type: contentType }), { freq: 3, nil: undefined })
    })
    await property(t, 'other paths', arb, async ({ c, path, extra, method, body }) => {
      const full = path + extra.map(s => `/${s.raw}`).join('')
      const withBody = body !== undefined && method !== 'GET' && method !== 'HEAD'
      const { r, authValid } = request(f, c, method, full, withBody ? { payload: body.text, contentType: body.type } : {})
      const a = await f.h.send(r)
      if (extra.length > 0 || r.url.length > 8192) return
      const route = decodeURIComponent(path)
      const read = method === 'GET' || method === 'HEAD'
      if (route === '/health/live' && read) {
        expect(r, a, [{ status: 200 }])
        if (method === 'GET') must((a.json as { status?: unknown }).status === 'ok', `${Harness.where(r, a)}: liveness body`)
      } else if (route === '/metrics' && read) {
        expect(r, a, [{ status: 200 }])
        must(String(a.headers['content-type']).startsWith('text/plain'), `${Harness.where(r, a)}: metrics content type`)
      } else if (route === '/docs/json' && read) {
        expect(r, a, [authValid ? { status: 200 } : { status: 401, code: 'unauthorized' }])
      } else if (route !== '/health/ready' || !read) {
        // Fastify reads a body before it finds no route: a bad one is refused first.
        expect(r, a, [{ status: 404, code: 'not_found' }, ...(withBody ? [invalidRequest(), invalidRequest(413), invalidRequest(415)] : [])])
      }
    }, { numRuns: 2 * RUNS })
  })

  await t.test('the harness fails on what it guards', async t => {
    const r: Request = { method: 'GET', url: '/health/live', headers: {}, unloggable: ['a\u2028planted-id'], generated: [] }
    const answer = async (): Promise<Answer> => {
      const res = await f.b.app.inject({ url: r.url })
      return { status: res.statusCode, headers: res.headers, body: res.body, id: String(res.headers['x-correlation-id']), json: undefined }
    }
    f.h.drainLogs()
    let a = await answer()
    f.b.app.log.info({ merchant_id: 'bad id' }, 'planted line')
    t.throws(() => f.h.verify(r, a), { name: 'PropertyFailure' }, 'an invalid merchant id in a log line')
    f.h.drainLogs()
    a = await answer()
    f.b.app.log.info({ detail: 'x a\u2028planted-id y' }, 'planted line')
    t.throws(() => f.h.verify(r, a), { name: 'PropertyFailure' }, 'generated text in a log line')
    f.h.drainLogs()
    a = await answer()
    t.throws(() => f.h.verify({ ...r, correlationId: 'client-chosen-id-3' }, a), { name: 'PropertyFailure' }, 'a well-formed caller id not kept')
    t.throws(() => f.h.verify(r, { ...a, status: 500 }), { name: 'PropertyFailure' }, 'a 500')
    t.throws(() => f.h.verify({ ...r, url: '/oauth/callback' }, { ...a, headers: { ...a.headers, 'content-type': 'text/html' }, body: '<p>"><b></p>' }), { name: 'PropertyFailure' }, 'a page the service does not render')
  })

  await t.test('after the run', async t => {
    await checkEndState(t, f)
  })
})
