// INTERNAL_PORT: over real HTTP on 127.0.0.1, the internal API, /metrics and /docs answer only on
// the internal listener, /oauth only on the public one, /health on both; a route asked for on the
// wrong listener is answered exactly as an unknown route (whatever the URL's form or the body), so
// nothing tells it exists. Both listeners listen and close with the app, client errors get the same
// answers on both, and without INTERNAL_PORT one listener serves everything, as before.
import t, { type Test } from 'tap'
import { connect, createServer as createTcpServer } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { Agent, request } from 'undici'
import { build, onboard, type Built } from '../helper.js'
import { internalServer } from '../../src/app.js'
import { ListenerPair } from '../../src/listeners.js'
import { freePort, isPortOpen } from '../../src/net-utils.js'

const LOOPBACK = { HOST: '127.0.0.1', INTERNAL_HOST: '127.0.0.1' }

interface Answer { status: number, headers: Record<string, string>, body: string }

/** One request written as is on a fresh connection (Connection: close); what came back. */
async function raw (port: number, head: string, body = ''): Promise<Answer> {
  const socket = connect(port, '127.0.0.1')
  const chunks: Buffer[] = []
  socket.on('data', (c: Buffer) => chunks.push(c))
  const length = body === '' ? '' : `Content-Length: ${Buffer.byteLength(body)}\r\n`
  socket.write(`${head}\r\nHost: 127.0.0.1\r\nConnection: close\r\n${length}\r\n${body}`)
  await new Promise<void>((resolve, reject) => { socket.once('close', () => resolve()).once('error', reject) })
  const text = Buffer.concat(chunks).toString('utf8')
  const at = text.indexOf('\r\n\r\n')
  const [statusLine, ...lines] = text.slice(0, at).split('\r\n')
  const headers: Record<string, string> = {}
  for (const l of lines) {
    const i = l.indexOf(':')
    headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim()
  }
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(statusLine)?.[1] ?? 0), headers, body: text.slice(at + 4) }
}

const get = async (port: number, path: string, extra = ''): Promise<Answer> => await raw(port, `GET ${path} HTTP/1.1${extra}`)

/** What an answer says apart from its ids and date: status, headers, body. */
function shape (a: Answer): { status: number, headers: Record<string, string>, body: string } {
  const id = a.headers['x-correlation-id'] ?? '<none>'
  const headers = Object.fromEntries(Object.entries(a.headers).filter(([k]) => k !== 'date').map(([k, v]) => [k, v.replaceAll(id, '<id>')]))
  return { status: a.status, headers, body: a.body.replaceAll(id, '<id>') }
}

interface Listening { b: Built, publicPort: number, internalPort: number }

async function listening (t: Test, env: Record<string, string> = {}): Promise<Listening> {
  const b = await build(t, { env: { ...LOOPBACK, PORT: '0', INTERNAL_PORT: '0', ...env } })
  await b.app.listen({ host: '127.0.0.1', port: 0 })
  const internal = internalServer(b.app)
  if (internal === undefined) throw new Error('no internal listener')
  return { b, publicPort: (b.app.server.address() as { port: number }).port, internalPort: (internal.address() as { port: number }).port }
}

t.test('each listener serves its routes; /health answers on both', async t => {
  const { b, publicPort, internalPort } = await listening(t)
  t.not(publicPort, internalPort)
  t.ok(b.logs.lines().some(l => l.msg === `Internal listener at http://127.0.0.1:${internalPort} (internal API, /metrics, /docs)`), 'the internal address is logged')
  // The browser flow goes through the public side (inject stands for a public client: below).
  t.equal((await onboard(b, 'merchant_a')).statusCode, 200)
  const auth = `\r\nAuthorization: ${b.auth.authorization}`
  const token = await get(internalPort, '/internal/v1/merchants/merchant_a/access-token', auth)
  t.equal(token.status, 200, 'the internal API on the internal port')
  t.match(JSON.parse(token.body), { merchant_id: 'merchant_a', access_token: String })
  t.equal((await get(publicPort, '/internal/v1/merchants/merchant_a/access-token', auth)).status, 404, 'and not on the public one')

  const metrics = await get(internalPort, '/metrics')
  t.equal(metrics.status, 200)
  t.match(metrics.body, /^# HELP /m)
  t.equal((await get(publicPort, '/metrics')).status, 404)

  const docs = await get(internalPort, '/docs/json', auth)
  t.equal(docs.status, 200)
  t.match(JSON.parse(docs.body), { openapi: String })
  t.equal((await get(publicPort, '/docs/json', auth)).status, 404)

  const connect = await get(publicPort, '/oauth/connect')
  t.equal(connect.status, 302, '/oauth on the public port')
  t.match(connect.headers.location, /^http:\/\/127\.0\.0\.1:\d+\/ebc2\/oauth\/authorize\?/)
  t.equal((await get(internalPort, '/oauth/connect')).status, 404, 'and not on the internal one')

  for (const port of [publicPort, internalPort]) {
    const where = port === publicPort ? 'public' : 'internal'
    t.equal((await get(port, '/health/live')).status, 200, `/health/live on ${where}`)
    // Served, whatever it says (a loaded test machine may make it report an event-loop delay).
    const ready = await get(port, '/health/ready')
    t.match({ status: ready.status, body: JSON.parse(ready.body) as unknown }, { status: /^(200|503)$/, body: { status: /^(ready|unavailable)$/ } }, `/health/ready on ${where}`)
  }

  // inject has no socket of the internal listener: it is a public client.
  t.equal((await b.app.inject({ url: '/metrics' })).statusCode, 404)
  t.equal((await b.app.inject({ url: '/health/live' })).statusCode, 200)
})

t.test('a route on the wrong listener is answered as an unknown route, whatever the request', async t => {
  const { b, publicPort, internalPort } = await listening(t)
  const auth = `\r\nAuthorization: ${b.auth.authorization}`
  const json = '\r\nContent-Type: application/json'
  const long = 'm'.repeat(200)
  // [port, request line and headers, body, the same request to a route that does not exist]
  const probes: Array<[number, string, string, string]> = [
    [publicPort, `GET /internal/v1/merchants/m1/access-token HTTP/1.1${auth}`, '', `GET /zzzzzzzz/v1/merchants/m1/access-token HTTP/1.1${auth}`],
    [publicPort, `GET /%69nternal/v1/merchants/m1/access-token HTTP/1.1${auth}`, '', `GET /zzzzzzzzzz/v1/merchants/m1/access-token HTTP/1.1${auth}`],
    // Over the router's parameter limit: a 400 for a route that exists, a 404 for one that does not.
    [publicPort, `GET /internal/v1/merchants/${long}/access-token HTTP/1.1${auth}`, '', `GET /zzzzzzzz/v1/merchants/${long}/access-token HTTP/1.1${auth}`],
    // A body the route would reject (415, or 400 for bad JSON) but an unknown route parses.
    [publicPort, `POST /internal/v1/onboarding-links HTTP/1.1${auth}${json}`, '{bad', `POST /zzzzzzzz/v1/onboarding-links HTTP/1.1${auth}${json}`],
    [publicPort, `POST /internal/v1/onboarding-links HTTP/1.1${auth}\r\nContent-Type: text/plain`, 'x', `POST /zzzzzzzz/v1/onboarding-links HTTP/1.1${auth}\r\nContent-Type: text/plain`],
    [publicPort, 'GET /internal/%zz HTTP/1.1', '', 'GET /zzzzzzzz/%zz HTTP/1.1'],
    [publicPort, 'GET /metrics?x=1 HTTP/1.1', '', 'GET /zzzzzzz?x=1 HTTP/1.1'],
    [publicPort, 'GET /metrics/ HTTP/1.1', '', 'GET /zzzzzzz/ HTTP/1.1'],
    [publicPort, `GET /docs/json HTTP/1.1${auth}`, '', `GET /zzzz/json HTTP/1.1${auth}`],
    [internalPort, 'GET /oauth/connect HTTP/1.1', '', 'GET /zzzzz/connect HTTP/1.1'],
    [internalPort, 'GET /%6Fauth/connect HTTP/1.1', '', 'GET /zzzzzzz/connect HTTP/1.1'],
    [internalPort, 'GET /oauth/callback?code=c&state=s HTTP/1.1', '', 'GET /zzzzz/callback?code=c&state=s HTTP/1.1'],
    [internalPort, `POST /oauth/callback HTTP/1.1${json}`, '{bad', `POST /zzzzz/callback HTTP/1.1${json}`],
    [internalPort, 'GET /oauth/%zz HTTP/1.1', '', 'GET /zzzzz/%zz HTTP/1.1']
  ]
  for (const [port, hidden, body, unknown] of probes) {
    const name = `${port === publicPort ? 'public' : 'internal'}: ${hidden.split('\r\n')[0].slice(0, 60)}`
    const [a, u] = [await raw(port, hidden, body), await raw(port, unknown, body)]
    t.not(a.status, 200, name)
    t.same(shape(a), shape(u), name)
  }

  // Forms the rewrite leaves alone (absolute-form): the matched route is checked, a 404 still.
  const absolute = await get(publicPort, `http://127.0.0.1:${publicPort}/internal/v1/merchants/m1/access-token`, auth)
  t.equal(absolute.status, 404)
  t.match(JSON.parse(absolute.body), { error: { code: 'not_found' } })
  t.equal((await get(publicPort, `http://127.0.0.1:${publicPort}/health/live`)).status, 200)
  t.equal((await get(internalPort, `http://127.0.0.1:${internalPort}/oauth/connect`)).status, 404)
  t.equal((await get(internalPort, `http://127.0.0.1:${internalPort}/metrics`)).status, 200)
})

t.test('Node-level errors get the same answers on the internal listener', async t => {
  const { publicPort, internalPort } = await listening(t)
  for (const port of [publicPort, internalPort]) {
    const expect = await get(port, '/health/live', '\r\nExpect: something-else')
    t.equal(expect.status, 417)
    t.match(JSON.parse(expect.body), { error: { code: 'invalid_request', correlation_id: expect.headers['x-correlation-id'] } })
    const malformed = await raw(port, 'GET /health/live HTTP/1.1\r\nBad Header\r\nX: y')
    t.equal(malformed.status, 400)
    t.match(JSON.parse(malformed.body), { error: { code: 'invalid_request', message: 'The request is malformed' } })
  }
})

t.test('close() stops both listeners, draining a request in flight on the internal one', async t => {
  let release: () => void = () => {}
  const started = new Promise<void>(resolve => { release = resolve })
  const b = await build(t, {
    env: { ...LOOPBACK, PORT: '0', INTERNAL_PORT: '0' },
    // A slow internal route: closing must wait for it (and for the Redis it may need).
    routes: async (app) => {
      app.get('/internal/slow', async () => { release(); await sleep(300); return { redis: await app.redis.ping() } })
    }
  })
  await b.app.listen({ host: '127.0.0.1', port: 0 })
  const publicPort = (b.app.server.address() as { port: number }).port
  const internalPort = ((internalServer(b.app)?.address()) as { port: number }).port
  const agent = new Agent({ keepAliveTimeout: 60_000 })
  t.teardown(async () => await agent.close())
  // An idle keep-alive connection to each port must not hold close() up.
  for (const port of [publicPort, internalPort]) {
    const res = await request(`http://127.0.0.1:${port}/health/live`, { dispatcher: agent })
    t.equal(res.statusCode, 200)
    await res.body.dump()
  }
  const client = new Agent()
  const slow = request(`http://127.0.0.1:${internalPort}/internal/slow`, { dispatcher: client })
  await started
  const closing = b.app.close()
  const res = await slow
  t.equal(res.statusCode, 200, 'the request in flight completed')
  t.same(await res.body.json(), { redis: 'PONG' }, 'with Redis still open')
  // Its connection stays open for keep-alive until the client (or the idle timeout) closes it.
  await client.close()
  await closing
  t.equal(await isPortOpen(publicPort), false, 'the public port is free')
  t.equal(await isPortOpen(internalPort), false, 'the internal port is free')
})

t.test('a port that cannot be bound fails listen() and leaves nothing listening', async t => {
  const taken = createTcpServer()
  await new Promise<void>(resolve => taken.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { taken.close() })
  const takenPort = (taken.address() as { port: number }).port

  const a = await build(t, { env: { ...LOOPBACK, PORT: '0', INTERNAL_PORT: String(takenPort) } })
  const publicPort = await freePort()
  await t.rejects(a.app.listen({ host: '127.0.0.1', port: publicPort }), { code: 'EADDRINUSE', port: takenPort }, 'the internal port')
  t.equal(await isPortOpen(publicPort), false, 'the public port was not bound')

  const internalPort = await freePort()
  const b = await build(t, { env: { ...LOOPBACK, PORT: '0', INTERNAL_PORT: String(internalPort) } })
  await t.rejects(b.app.listen({ host: '127.0.0.1', port: takenPort }), { code: 'EADDRINUSE', port: takenPort }, 'the public port')
  // The internal listener closes on its own: wait for it rather than for the app's close.
  for (let i = 0; i < 100 && await isPortOpen(internalPort); i++) await sleep(20)
  t.equal(await isPortOpen(internalPort), false, 'the internal port was released')
})

t.test('without INTERNAL_PORT one listener serves every route, as before', async t => {
  const b = await build(t, { env: LOOPBACK })
  t.notOk(b.app.server instanceof ListenerPair, 'Fastify\'s own server')
  t.equal(internalServer(b.app), undefined)
  await b.app.listen({ host: '127.0.0.1', port: 0 })
  const port = (b.app.server.address() as { port: number }).port
  t.equal((await onboard(b, 'merchant_b')).statusCode, 200)
  const auth = `\r\nAuthorization: ${b.auth.authorization}`
  t.equal((await get(port, '/internal/v1/merchants/merchant_b/access-token', auth)).status, 200)
  t.equal((await get(port, '/metrics')).status, 200)
  t.equal((await get(port, '/docs/json', auth)).status, 200)
  t.equal((await get(port, '/oauth/connect')).status, 302)
  t.equal((await get(port, '/health/live')).status, 200)
  t.equal((await b.app.inject({ url: '/metrics' })).statusCode, 200, 'inject reaches every route')
  // The parameter limit is still a 400 where a route exists.
  t.equal((await get(port, `/internal/v1/merchants/${'m'.repeat(200)}/access-token`, auth)).status, 400)
})
