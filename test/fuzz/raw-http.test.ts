// Property-based fuzzing over a real socket, for what app.inject cannot send: request targets
// with dot segments, raw bytes, backslashes, fragments or an absolute form; methods and header
// bytes the HTTP parser refuses; repeated and oversized headers; bodies framed by Content-Length
// or chunks, conflicting or broken. The same harness checks every answer and log line (parser
// errors included: src/client-errors.ts). Refreshes and deletes never name an onboarded merchant.
import { connect } from 'node:net'
import t from 'tap'
import fc from 'fast-check'
import { authCase, authorization, correlationCase, hostileText, type AuthCase } from './arbitraries.js'
import { CORRELATION_ID, Harness, REAL, checkEndState, must, printable, property, setup, type Answer, type Request } from './harness.js'

const RUNS = Number(process.env.FUZZ_RUNS ?? 2000)

/** Sends raw bytes on a fresh connection and reads the answer until the server closes it. */
async function exchange (port: number, bytes: Buffer): Promise<Buffer> {
  return await new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    const chunks: Buffer[] = []
    socket.on('data', c => chunks.push(c))
    socket.on('end', () => resolve(Buffer.concat(chunks)))
    socket.on('error', err => {
      // The server may close as soon as it has answered a request it refused.
      if ((err as NodeJS.ErrnoException).code === 'ECONNRESET' && chunks.length > 0) resolve(Buffer.concat(chunks))
      else reject(err)
    })
    socket.setTimeout(10_000, () => { socket.destroy(new Error('no answer within 10 s')) })
    // Not end(): a half-closed connection may be dropped before its answer is written.
    socket.write(bytes)
  })
}

/**
 * The first HTTP response in `raw` (headers by lower-case name; a chunked body decoded). `sent`
 * is its body even after a HEAD: the parser's own answers cannot know the method.
 */
function parse (raw: Buffer, head: boolean): Answer & { sent: string } {
  // Interim answers (100 Continue) come first.
  while (/^HTTP\/1\.1 1\d\d /.test(raw.toString('latin1', 0, 13))) raw = raw.subarray(raw.indexOf('\r\n\r\n') + 4)
  const text = raw.toString('latin1')
  const end = text.indexOf('\r\n\r\n')
  must(end > 0, `not an HTTP answer: ${printable(text, 200)}`)
  const [status, ...lines] = text.slice(0, end).split('\r\n')
  const m = /^HTTP\/1\.1 (\d{3}) /.exec(status)
  must(m !== null, `status line ${printable(status)}`)
  const headers: Record<string, string> = {}
  for (const line of lines) {
    const colon = line.indexOf(':')
    headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim()
  }
  let body = raw.subarray(end + 4)
  // An answer to a HEAD that the server read as one has no body: what follows is the next answer.
  if (head && body.toString('latin1', 0, 5) === 'HTTP/') body = Buffer.alloc(0)
  else if (headers['content-length'] !== undefined) body = body.subarray(0, Number(headers['content-length']))
  else if (headers['transfer-encoding'] === 'chunked') {
    const parts: Buffer[] = []
    for (let at = 0; ;) {
      const eol = body.indexOf('\r\n', at)
      const size = parseInt(body.subarray(at, eol).toString('latin1'), 16)
      if (!(size > 0)) break
      parts.push(body.subarray(eol + 2, eol + 2 + size))
      at = eol + 2 + size + 2
    }
    body = Buffer.concat(parts)
  }
  return { status: Number(m[1]), headers, body: head ? '' : body.toString('utf8'), id: headers['x-correlation-id'] ?? '', json: undefined, sent: body.toString('utf8') }
}

/** The messages of src/client-errors.ts. */
const PARSER_MESSAGES = ['The request is malformed', 'The request headers are too large', 'The request did not arrive in time']

type Target =
  | { kind: 'origin', base: number, dots: number, at: number }
  | { kind: 'absolute', base: number, authority: string }
  | { kind: 'bytes', base: number, bytes: number[] }
  | { kind: 'special', value: string }

/** Read routes name an onboarded merchant; anything else an unknown one. */
const BASES = [
  '/oauth/connect', '/oauth/connect?merchant_id=m_fuzz_1', '/oauth/callback', '/oauth/callback?code=c0de0000&state=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',
  '/internal/v1/merchants/{m}', '/internal/v1/merchants/{m}/access-token', '/internal/v1/merchants/{m}/refresh', '/internal/v1/merchants?limit=1',
  '/internal/v1/onboarding-links', '/health/live', '/health/ready', '/metrics', '/docs/json'
]
const DOTS = ['/.', '/..', '/x/..', '/%2e', '/%2E%2E', '/.%2e', '//']

const target: fc.Arbitrary<Target> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('origin' as const), base: fc.nat(BASES.length - 1), dots: fc.nat(DOTS.length), at: fc.nat(8) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('absolute' as const), base: fc.nat(BASES.length - 1), authority: fc.constantFrom('http://127.0.0.1', 'http://evil.example', 'https://x:1', 'HTTP://A', 'http://user@host', 'http://[::1]:80') }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('bytes' as const), base: fc.nat(BASES.length - 1), bytes: fc.array(fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(0xe2, 0x80, 0xa8, 0x5c, 0x23, 0x20, 0x09, 0x7f, 0x00)), { minLength: 1, maxLength: 6 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('special' as const), value: fc.constantFrom('*', '', '/', '//oauth/connect', '\\oauth\\connect', '/oauth/connect#x', '/oauth/connect?#', 'oauth/connect', '/%', '/oauth/%zz', `/${'a'.repeat(9000)}`, `/oauth/callback?code=${'c'.repeat(9000)}`) }) }
)

function targetBytes (t: Target, method: string): Buffer {
  const base = (i: number): string => BASES[i].replace('{m}', method === 'GET' || method === 'HEAD' ? REAL[0] : 'm_ghost_1')
  switch (t.kind) {
    case 'origin': {
      const b = base(t.base)
      if (t.dots === DOTS.length) return Buffer.from(b)
      // Dot segments at one of the slashes: never resolved by the server.
      const slashes = [...b.matchAll(/\//g)].map(x => x.index)
      const cut = slashes[t.at % slashes.length]
      return Buffer.from(b.slice(0, cut) + DOTS[t.dots] + b.slice(cut))
    }
    case 'absolute': return Buffer.from(t.authority + base(t.base))
    case 'bytes': {
      const b = base(t.base)
      const q = b.indexOf('?')
      const cut = q < 0 ? b.length : q
      return Buffer.concat([Buffer.from(b.slice(0, cut)), Buffer.from(t.bytes), Buffer.from(b.slice(cut))])
    }
    case 'special': return Buffer.from(t.value)
  }
}

interface Case {
  method: string
  target: Target
  auth: AuthCase
  /** Sent as latin1 bytes, whatever they are. */
  cid: string | undefined
  extraHeaders: Array<[string, string]>
  body: { text: string, framing: 'length' | 'chunked' | 'both' | 'broken-chunk' | 'short-length' } | undefined
}

const headerPair: fc.Arbitrary<[string, string]> = fc.oneof(
  fc.tuple(fc.constantFrom('authorization', 'x-correlation-id', 'content-type', 'transfer-encoding', 'host', 'expect', 'x-forwarded-for'), fc.oneof(hostileText, fc.constantFrom('chunked', 'identity', '100-continue', 'application/json', 'client-chosen-id-2'))),
  fc.tuple(fc.constantFrom('x-big', 'cookie'), fc.integer({ min: 100, max: 20_000 }).map(n => 'b'.repeat(n))),
  fc.tuple(fc.constantFrom('bad header', 'x\u0000', '', 'x-é'), fc.constant('v'))
)

const caseArb: fc.Arbitrary<Case> = fc.record({
  method: fc.constantFrom('GET', 'GET', 'HEAD', 'POST', 'DELETE', 'OPTIONS', 'PUT', 'get', 'FOO', 'G ET'),
  target,
  auth: authCase,
  cid: correlationCase,
  extraHeaders: fc.array(headerPair, { maxLength: 2 }),
  body: fc.option(fc.record({
    text: fc.oneof(fc.constantFrom('{}', '{"merchant_id":"m_ghost_2"}', '{"merchant_id":"bad id"}', 'merchant_id=x'), hostileText),
    framing: fc.constantFrom('length' as const, 'length' as const, 'chunked' as const, 'both' as const, 'broken-chunk' as const)
  }), { freq: 3, nil: undefined })
})

t.test('raw HTTP under generated input', async t => {
  const f = await setup(t, { RATE_LIMIT_MAX: '10000000', STATE_MAX_PER_CLIENT: '1000000', STATE_MAX_TOTAL: '100000000' })
  await f.b.app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = f.b.app.server.address() as { port: number }

  await t.test('request targets, methods, headers and framing', async t => {
    await property(t, 'raw requests', caseArb, async (c) => {
      const a = authorization(c.auth, f.h.credentials)
      const target = targetBytes(c.target, c.method)
      const head: Buffer[] = [Buffer.from(`${c.method} `), target, Buffer.from(' HTTP/1.1\r\nHost: 127.0.0.1\r\n')]
      // A value with a CR or LF ends the header block early (or is refused): the headers after it,
      // the correlation id among them, may never reach the server as headers.
      let split = false
      const header = (name: string, value: string): void => {
        if (/[\r\n]/.test(value)) split = true
        head.push(Buffer.from(`${name}: `, 'latin1'), Buffer.from(value, 'latin1'), Buffer.from('\r\n'))
      }
      if (a.value !== undefined) header('Authorization', a.value)
      if (c.cid !== undefined) header('X-Correlation-Id', c.cid)
      for (const [name, value] of c.extraHeaders) header(name, value)
      let body = Buffer.alloc(0)
      if (c.body !== undefined) {
        const text = Buffer.from(c.body.text)
        const chunked = Buffer.concat([Buffer.from(`${text.length.toString(16)}\r\n`), text, Buffer.from('\r\n0\r\n\r\n')])
        header('Content-Type', 'application/json')
        if (c.body.framing === 'length' || c.body.framing === 'both') header('Content-Length', String(text.length))
        if (c.body.framing !== 'length') header('Transfer-Encoding', 'chunked')
        body = c.body.framing === 'length' ? text : c.body.framing === 'broken-chunk' ? Buffer.concat([Buffer.from('zz\r\n'), text, Buffer.from('\r\n')]) : chunked
      }
      header('Connection', 'close')
      head.push(Buffer.from('\r\n'))
      // The request line ends the target at its first space: what follows (another space, when
      // the parser takes the line at all) is not part of the URL the server routes.
      const sent = target.toString('latin1')
      const url = sent.split(' ')[0]
      const unloggable = [sent]
      if (a.presented !== undefined) unloggable.push(a.presented)
      if (c.cid !== undefined && !CORRELATION_ID.test(c.cid)) unloggable.push(c.cid)
      const r: Request = { method: c.method as Request['method'], url, headers: {}, unloggable, generated: [sent, c.cid ?? ''], correlationId: c.cid }
      f.h.drainLogs()
      const raw = await exchange(port, Buffer.concat([...head, body]))
      const answer = parse(raw, c.method === 'HEAD')
      // A second header of the same name is joined to the first: the id sent is then not the one given.
      if (c.extraHeaders.some(([n]) => n === 'x-correlation-id') || split) r.correlationId = undefined
      // What the HTTP parser refuses never reaches a route: its answer is the JSON error of any path.
      const refused = PARSER_MESSAGES.some(m => answer.sent.includes(`"message":"${m}"`))
      const path = url.replace(/^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/]*/, '').split(/[?#]/)[0]
      if (refused && c.method === 'GET' && path === '/oauth/connect') f.h.abandonedStarts += 1
      f.h.verify(refused ? { ...r, url: '(refused by the HTTP parser)', correlationId: undefined } : r, answer)
      must(answer.status !== 500, `${Harness.where(r, answer)}: 500`)
    }, {
      numRuns: RUNS,
      examples: [
        // A second space after the target: the parser takes the line, and the URL ends at the first.
        { method: 'GET', target: { kind: 'bytes', base: 0, bytes: [32] }, auth: { kind: 'missing' }, cid: undefined, extraHeaders: [], body: undefined },
        // The absolute form of a request target routes to a browser route, but genReqId tests the
        // raw target for the "/oauth/" prefix: the client's x-correlation-id is printed on the page.
        { method: 'GET', target: { kind: 'absolute', base: 2, authority: 'http://evil.example' }, auth: { kind: 'missing' }, cid: 'client-chosen-id-1', extraHeaders: [], body: undefined },
        // Answers of the HTTP parser's errors (src/client-errors.ts) carry no x-correlation-id header.
        { method: 'FOO', target: { kind: 'origin', base: 9, dots: DOTS.length, at: 0 }, auth: { kind: 'missing' }, cid: undefined, extraHeaders: [], body: undefined },
        // An Expect other than 100-continue gets Node's own 417 (no 'checkExpectation' listener):
        // no x-correlation-id, no nosniff, an empty body.
        { method: 'GET', target: { kind: 'origin', base: 9, dots: DOTS.length, at: 0 }, auth: { kind: 'missing' }, cid: undefined, extraHeaders: [['expect', 'chunked']], body: undefined }
      ]
    })
  })

  await t.test('after the run', async t => {
    await checkEndState(t, f)
  })
})
