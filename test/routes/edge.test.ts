// The edges of the HTTP surface: the bearer challenge on a 401, who may choose a correlation id,
// and what Node's parser answers before Fastify sees a request (headers too slow or too large, a
// body that never arrives), in the JSON error shape, over raw sockets to a listening app.
import t, { type Test } from 'tap'
import { connect } from 'node:net'
import { build, type Built } from '../helper.js'
import { REFERENCE_PATTERN } from '../../src/pages.js'

const GENERATED = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

interface RawAnswer { status: number, headers: Record<string, string>, body: string, ms: number, closed: boolean }

/**
 * Writes `request` on a fresh connection, then stalls; resolves with what the server sent once it
 * closed the connection (or after guardMs, with closed false).
 */
async function raw (t: Test, port: number, request: string, guardMs: number): Promise<RawAnswer> {
  const socket = connect(port, '127.0.0.1')
  t.teardown(() => { socket.destroy() })
  const started = performance.now()
  const chunks: Buffer[] = []
  socket.on('data', (c: Buffer) => chunks.push(c))
  socket.on('error', () => {})
  socket.write(request)
  const closed = await new Promise<boolean>(resolve => {
    const timer = setTimeout(() => resolve(false), guardMs)
    socket.once('close', () => { clearTimeout(timer); resolve(true) })
  })
  const ms = performance.now() - started
  const text = Buffer.concat(chunks).toString('latin1')
  const [head, ...rest] = text.split('\r\n\r\n')
  const [statusLine, ...lines] = head.split('\r\n')
  const headers: Record<string, string> = {}
  for (const l of lines) {
    const i = l.indexOf(':')
    if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim()
  }
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(statusLine)?.[1] ?? 0), headers, body: rest.join('\r\n\r\n'), ms, closed }
}

/** Asserts the JSON error shape (docs/api.md) of a raw answer. */
function assertErrorShape (t: Test, res: RawAnswer, status: number, what: string): void {
  t.equal(res.status, status, `${what}: ${status}`)
  t.match(res.headers['content-type'], /^application\/json/, `${what}: JSON`)
  t.equal(res.headers['x-content-type-options'], 'nosniff', `${what}: nosniff`)
  t.equal(res.headers['content-length'], String(Buffer.byteLength(res.body)), `${what}: the whole body`)
  let body: { error?: { code?: unknown, message?: unknown, correlation_id?: unknown } } = {}
  try { body = JSON.parse(res.body) } catch {}
  t.same(Object.keys(body), ['error'], `${what}: only "error"`)
  t.same(Object.keys(body.error ?? {}).sort(), ['code', 'correlation_id', 'message'], `${what}: error fields`)
  t.equal(body.error?.code, 'invalid_request', `${what}: invalid_request`)
  t.type(body.error?.message, 'string')
  t.match(body.error?.correlation_id, GENERATED, `${what}: a correlation id`)
  t.ok(res.closed, `${what}: the connection is closed`)
}

async function listening (t: Test): Promise<{ b: Built, port: number }> {
  const b = await build(t)
  await b.app.listen({ host: '127.0.0.1', port: 0 })
  return { b, port: (b.app.server.address() as { port: number }).port }
}

t.test('a 401 carries the bearer challenge; other answers do not', async t => {
  const b = await build(t)
  const denied: Array<[string, Record<string, string>]> = [
    ['no Authorization header', {}],
    ['a wrong secret', { authorization: `Bearer ${'x'.repeat(40)}` }],
    ['another scheme', { authorization: `Basic ${Buffer.from(`payments:${b.secrets.apiSecret}`).toString('base64')}` }]
  ]
  for (const url of ['/internal/v1/merchants', '/internal/v1/merchants/m_1/access-token', '/docs/json']) {
    for (const [what, headers] of denied) {
      const res = await b.app.inject({ url, headers })
      t.equal(res.statusCode, 401, `${url}, ${what}: 401`)
      t.equal(res.headers['www-authenticate'], 'Bearer', `${url}, ${what}: WWW-Authenticate: Bearer`)
      t.equal(res.json().error.code, 'unauthorized')
    }
  }
  const ok = await b.app.inject({ url: '/internal/v1/merchants', headers: b.auth })
  t.equal(ok.statusCode, 200)
  t.equal(ok.headers['www-authenticate'], undefined, 'not on a 200')
  const missing = await b.app.inject({ url: '/internal/v1/merchants/m_none', headers: b.auth })
  t.equal(missing.statusCode, 404)
  t.equal(missing.headers['www-authenticate'], undefined, 'not on a 404')
})

t.test('a browser route makes its own correlation id; the internal API keeps the caller\'s', async t => {
  const b = await build(t)
  const given = 'caller-chosen-id-0001'
  const connectRes = await b.app.inject({ url: '/oauth/connect', headers: { 'x-correlation-id': given } })
  t.equal(connectRes.statusCode, 302)
  t.match(String(connectRes.headers['x-correlation-id']), REFERENCE_PATTERN, 'connect: a fresh short reference')

  const page = await b.app.inject({ url: '/oauth/callback?code=abcdefgh&state=unknown-state', headers: { 'x-correlation-id': given } })
  t.equal(page.statusCode, 401)
  const id = String(page.headers['x-correlation-id'])
  t.match(id, REFERENCE_PATTERN, 'callback: a fresh short reference')
  t.notOk(page.body.includes(given), 'the page does not show the caller\'s id')
  t.match(page.body, `Reference: <strong>${id}</strong>`, 'the page shows its own id')
  t.notOk(b.logs.lines().some(l => l.reqId === given), 'no log line carries the caller\'s id')

  const internal = await b.app.inject({ url: '/internal/v1/merchants', headers: { ...b.auth, 'x-correlation-id': given } })
  t.equal(internal.statusCode, 200)
  t.equal(internal.headers['x-correlation-id'], given, 'the internal API echoes a well-formed id')
  const error = await b.app.inject({ url: '/internal/v1/merchants/m_none', headers: { ...b.auth, 'x-correlation-id': given } })
  t.equal(error.json().error.correlation_id, given, 'and puts it in its error bodies')
  const bad = await b.app.inject({ url: '/internal/v1/merchants', headers: { ...b.auth, 'x-correlation-id': 'bad id' } })
  t.match(String(bad.headers['x-correlation-id']), GENERATED, 'an ill-formed one is replaced')
})

t.test('headers that arrive too slowly: 408 in the error shape, connection closed', async t => {
  const { port } = await listening(t)
  // headersTimeout is 10 s, checked every second; the guard only keeps a broken server from hanging the test.
  const res = await raw(t, port, 'GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ', 20_000)
  assertErrorShape(t, res, 408, 'slow headers')
  t.ok(res.ms >= 9000 && res.ms < 15_000, `closed after ${Math.round(res.ms)} ms (headers timeout 10 s)`)
})

t.test('headers over the size limit: 431 in the error shape', async t => {
  const { port } = await listening(t)
  const res = await raw(t, port, `GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ${'a'.repeat(20 * 1024)}\r\n\r\n`, 5000)
  assertErrorShape(t, res, 431, 'oversized headers')
})

t.test('a body shorter than its Content-Length: 408 in the error shape once the request time is up', async t => {
  const { b, port } = await listening(t)
  // requestTimeout is 60 s in production. Node reads both limits at every check, and swaps them
  // when headersTimeout is the larger, so the test shortens both.
  b.app.server.headersTimeout = 1000
  b.app.server.requestTimeout = 2000
  const body = '{"merchant_id":'
  const res = await raw(t, port, [
    'POST /internal/v1/onboarding-links HTTP/1.1',
    'Host: 127.0.0.1',
    `Authorization: ${b.auth.authorization}`,
    'Content-Type: application/json',
    `Content-Length: ${body.length + 100}`,
    '',
    body
  ].join('\r\n'), 15_000)
  assertErrorShape(t, res, 408, 'lying Content-Length')
  t.ok(res.ms >= 1500 && res.ms < 8000, `closed after ${Math.round(res.ms)} ms (request timeout 2 s)`)
  t.same(b.logs.lines().filter(l => Number(l.level) >= 50).map(l => l.msg), [], 'nothing logged as an error')
})
