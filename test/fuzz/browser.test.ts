// Property-based fuzzing of the browser routes, /oauth/connect and /oauth/callback, and of other
// paths and methods under /oauth: generated hostile query strings (repeated, over-long, encoded
// every way, prototype keys), correlation ids, credentials and bodies, through app.inject, against
// one app on a private Redis and the simulator with three merchants onboarded. The harness
// (harness.ts) checks every answer (one of the service's own pages or an authorize redirect, no
// reflected input, no client-chosen correlation id) and every log line (no code, state, query
// value or invalid id); each route adds its oracle. The rate limit is lifted so that generated
// requests reach validation. Callbacks are sometimes given a real state, so consumption and the
// code exchange (refused by the simulator) are fuzzed too.
import t from 'tap'
import fc from 'fast-check'
import {
  authCase, authorization, contentType, correlationCase, hostileText, markup, merchantIdText, queryEncoding,
  queryPairs, queryString, queryValue, segment, spelledPath, type AuthCase, type QueryPair
} from './arbitraries.js'
import {
  CORRELATION_ID, ID_PATTERN, REAL, checkEndState, must, printable, property, setup,
  Harness, type Answer, type Fuzz, type Request
} from './harness.js'

const RUNS = Number(process.env.FUZZ_RUNS ?? 2000)

interface Common { auth: AuthCase, cid: string | undefined, enc: { mask: number, plus: boolean } }
const common: fc.Arbitrary<Common> = fc.record({ auth: authCase, cid: correlationCase, enc: queryEncoding })

const isLone = (s: string): boolean => /[\ud800-\udfff]/u.test(s)

/** A request to a browser route: every query value is generated text that must not be logged. */
function request (f: Fuzz, c: Common, method: Request['method'], path: string, pairs: QueryPair[], extra: { payload?: string, contentType?: string, unloggable?: string[] } = {}): Request {
  const a = authorization(c.auth, f.h.credentials)
  const headers: Record<string, string> = {}
  if (a.value !== undefined) headers.authorization = a.value
  if (c.cid !== undefined) headers['x-correlation-id'] = c.cid
  if (extra.contentType !== undefined) headers['content-type'] = extra.contentType
  const unloggable = [...pairs.flatMap(p => p.value === undefined ? [] : [p.value]), ...(extra.unloggable ?? [])]
  if (a.value !== undefined) unloggable.push(a.value)
  if (c.cid !== undefined && !CORRELATION_ID.test(c.cid)) unloggable.push(c.cid)
  return {
    method,
    url: path + queryString(pairs, c.enc.mask, c.enc.plus),
    headers,
    payload: extra.payload,
    unloggable,
    generated: [...pairs.flatMap(p => [p.key, p.value ?? '']), c.cid ?? '', path],
    correlationId: c.cid
  }
}

/** Statuses a browser route may answer for the query, before its own logic: 400 for a URL over 8,192 characters, a repeated or an over-long parameter. */
function queryOracle (r: Request, pairs: QueryPair[]): number[] | undefined {
  if (r.url.length > 8192) return [400]
  pairs = present(pairs)
  const counts = new Map<string, number>()
  for (const p of pairs) counts.set(p.key, (counts.get(p.key) ?? 0) + 1)
  if ([...counts.values()].some(n => n > 1)) return [400]
  // maxLength counts code points.
  if (pairs.some(p => [...(p.value ?? '')].length > 2048)) return [400]
  return undefined
}

/** The pairs the parser sees: a bare empty key is an empty '&&' segment, which it skips. */
const present = (pairs: QueryPair[]): QueryPair[] => pairs.filter(p => p.key !== '' || p.value !== undefined)

function expect (r: Request, a: Answer, statuses: number[]): void {
  must(statuses.includes(a.status), `${Harness.where(r, a)}: expected ${statuses.join(' or ')}`)
}

t.test('browser routes under generated input', async t => {
  const f = await setup(t, { RATE_LIMIT_MAX: '10000000', STATE_MAX_PER_CLIENT: '1000000', STATE_MAX_TOTAL: '100000000' })

  await t.test('GET and HEAD /oauth/connect', async t => {
    const merchant = fc.record({ key: fc.constant('merchant_id'), value: fc.option(fc.oneof(merchantIdText(REAL), markup), { freq: 10, nil: undefined }) })
    const pairs = fc.tuple(fc.option(merchant, { freq: 2, nil: undefined }), queryPairs(undefined, 4), fc.nat())
      .map(([m, rest, at]) => m === undefined ? rest : [...rest.slice(0, at % (rest.length + 1)), m, ...rest.slice(at % (rest.length + 1))])
    const arb = fc.record({ c: common, pairs, path: spelledPath('/oauth/connect'), method: fc.constantFrom('GET' as const, 'GET' as const, 'HEAD' as const) })
    await property(t, 'connect', arb, async ({ c, pairs, path, method }) => {
      const mid = pairs.find(p => p.key === 'merchant_id')
      const invalidId = mid !== undefined && !ID_PATTERN.test(mid.value ?? '')
      const r = request(f, c, method, path, pairs, { unloggable: invalidId && mid.value !== undefined ? [mid.value] : [] })
      const a = await f.h.send(r)
      const inexact = pairs.some(p => isLone(p.key) || isLone(p.value ?? ''))
      // GET only: a HEAD (a link checker, a mail scanner) has no route, and creates no state.
      if (method === 'HEAD') return expect(r, a, r.url.length > 8192 ? [414] : [404])
      const early = queryOracle(r, pairs)
      expect(r, a, early ?? (invalidId ? [400] : inexact ? [302, 400] : [302]))
      if (a.status !== 302) return
      // The state is bound to the merchant named, or to none.
      const state = new URL(String(a.headers.location)).searchParams.get('state') ?? ''
      const record = JSON.parse(await f.redis.get(f.b.app.redisKeys.state(state)) ?? 'null') as { merchantId?: string } | null
      must(record !== null && record.merchantId === mid?.value, `${Harness.where(r, a)}: the state is bound to ${printable(String(record?.merchantId))}`)
    }, {
      numRuns: RUNS,
      examples: [
        // A percent-encoded letter routes to /oauth/connect: the client's x-correlation-id must not
        // be taken there either (it once was, when the raw URL decided).
        { c: { auth: { kind: 'missing' }, cid: 'client-chosen-id-1', enc: { mask: 0, plus: false } }, pairs: [], path: '/%6Fauth/connect', method: 'GET' }
      ]
    })
  })

  await t.test('GET and HEAD /oauth/callback', async t => {
    type StateCase = { kind: 'real' } | { kind: 'text', value: string | undefined } | { kind: 'absent' }
    const stateCase: fc.Arbitrary<StateCase> = fc.oneof(
      { weight: 3, arbitrary: fc.constant({ kind: 'real' as const }) },
      { weight: 3, arbitrary: fc.record({ kind: fc.constant('text' as const), value: fc.option(fc.oneof(queryValue, fc.stringMatching(/^[A-Za-z0-9_-]{43}$/)), { freq: 10, nil: undefined }) }) },
      { weight: 2, arbitrary: fc.constant({ kind: 'absent' as const }) }
    )
    const code = fc.option(fc.oneof(queryValue, fc.stringMatching(/^[A-Za-z0-9_-]{24,32}$/)), { freq: 4, nil: null })
    const arb = fc.record({
      c: common,
      state: stateCase,
      code: code.map(v => v ?? undefined),
      bareCode: fc.boolean(),
      extra: queryPairs(['code', 'state', 'error', 'error_description', '__proto__', 'constructor', 'merchant_id', 'a[]'], 3),
      at: fc.nat(),
      path: spelledPath('/oauth/callback'),
      method: fc.constantFrom('GET' as const, 'GET' as const, 'HEAD' as const)
    })
    await property(t, 'callback', arb, async ({ c, state, code, bareCode, extra, at, path, method }) => {
      const real = state.kind === 'real' ? (await f.b.app.stateStore.create({})).state : undefined
      if (real !== undefined) f.h.ownStates.add(real)
      const pairs: QueryPair[] = [...extra]
      const insert = (p: QueryPair): void => { pairs.splice(at % (pairs.length + 1), 0, p) }
      if (state.kind !== 'absent') insert({ key: 'state', value: real ?? (state.kind === 'text' ? state.value : undefined) })
      if (code !== undefined || bareCode) insert({ key: 'code', value: code })
      const r = request(f, c, method, path, pairs, { unloggable: real === undefined ? [] : [real] })
      const a = await f.h.send(r)
      const inexact = pairs.some(p => isLone(p.key) || isLone(p.value ?? ''))
      const stateValue = present(pairs).find(p => p.key === 'state')
      const codeValue = present(pairs).find(p => p.key === 'code')
      const early = queryOracle(r, pairs)
      let want: number[]
      // GET only: a HEAD spends neither the state nor the code.
      if (method === 'HEAD') want = [r.url.length > 8192 ? 414 : 404]
      else if (early !== undefined) want = early
      else if (stateValue === undefined && codeValue === undefined) want = [200]
      else if (stateValue?.value === undefined || stateValue.value !== real) want = [401]
      // A real state is consumed: without a code the merchant denied; a code the simulator never issued is refused.
      else want = codeValue?.value === undefined || codeValue.value === '' ? [200] : [502]
      expect(r, a, inexact ? [...want, 400] : want)
      if (real === undefined) return
      const left = await f.redis.exists(f.b.app.redisKeys.state(real))
      const kept = a.status === 400 || a.status === 414 || a.status === 404
      must(left === (kept ? 1 : 0), `${Harness.where(r, a)}: the state was ${left === 1 ? 'not ' : ''}consumed`)
    }, { numRuns: RUNS })
  })

  await t.test('other paths and methods under /oauth', async t => {
    const arb = fc.record({
      c: common,
      base: fc.constantFrom('/oauth/connect', '/oauth/callback', '/oauth', '/oauth/', '/oauth/authorize', '/oauth/token').chain(p => spelledPath(p)),
      extra: fc.array(segment(hostileText), { maxLength: 2 }),
      pairs: queryPairs(undefined, 3),
      method: fc.constantFrom('POST' as const, 'PUT' as const, 'DELETE' as const, 'PATCH' as const, 'OPTIONS' as const, 'GET' as const),
      body: fc.option(fc.record({ text: fc.oneof(hostileText, queryValue), type: contentType }), { freq: 2, nil: undefined })
    }).filter(x => x.method !== 'GET' || x.extra.length > 0 || !['/oauth/connect', '/oauth/callback'].includes(decodeURIComponent(x.base)))
    await property(t, 'other /oauth requests', arb, async ({ c, base, extra, pairs, method, body }) => {
      const path = base + extra.map(s => `/${s.raw}`).join('')
      const withBody = body !== undefined && method !== 'GET'
      const r = request(f, c, method, path, pairs, withBody ? { payload: body.text, contentType: body.type } : {})
      const a = await f.h.send(r)
      // No route: a 404 (a 400 for a URL the router cannot decode); a bad body may be refused first.
      if (extra.some(s => s.text === undefined)) return expect(r, a, [400])
      if (r.url.length > 8192) return expect(r, a, [414])
      expect(r, a, [404, ...(withBody ? [400, 413, 415] : [])])
    }, { numRuns: RUNS })
  })

  await t.test('after the run', async t => {
    await checkEndState(t, f)
  })
})
