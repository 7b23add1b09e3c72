// Correlation ids (src/app.ts): every response carries x-correlation-id; a well-formed id sent by
// the caller is kept, anything else is replaced by a random one (128 bits as 32 hex characters,
// never a counter); error bodies and log lines carry the same id.
import t from 'tap'
import { REFERENCE_PATTERN } from '../../src/pages.js'
import { build } from '../helper.js'
import type { InjectOptions } from 'fastify'
import type { Logger } from 'pino'

const GENERATED = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

t.test('correlation ids', async t => {
  const b = await build(t)

  await t.test('generated ids are random and distinct, across refills of the random pool', async t => {
    const ids = new Set<string>()
    for (let i = 0; i < 600; i++) {
      const res = await b.app.inject({ url: '/health/live' })
      const id = String(res.headers['x-correlation-id'])
      if (!GENERATED.test(id)) t.fail(`malformed id ${id}`)
      ids.add(id)
    }
    t.equal(ids.size, 600, '600 requests, 600 ids')
    // Not a counter: consecutive ids share no long common prefix.
    const sorted = [...ids]
    const shared = sorted.slice(1).filter((id, i) => id.slice(0, 8) === sorted[i].slice(0, 8)).length
    t.ok(shared < 3, 'consecutive ids differ from their first characters')
  })

  await t.test('a well-formed id of the caller is kept, others are replaced', async t => {
    const kept = await b.app.inject({ url: '/health/live', headers: { 'x-correlation-id': 'pay-2026.11_26-abc' } })
    t.equal(kept.headers['x-correlation-id'], 'pay-2026.11_26-abc')
    for (const bad of ['short', 'has space in it', 'x'.repeat(65), 'semi;colon-123', '<script>alert(1)</script>']) {
      const res = await b.app.inject({ url: '/health/live', headers: { 'x-correlation-id': bad } })
      t.match(String(res.headers['x-correlation-id']), GENERATED, `replaced: ${JSON.stringify(bad)}`)
    }
  })

  await t.test('an error body and its log line carry the response\'s id', async t => {
    const res = await b.app.inject({ url: '/internal/v1/merchants/m_none/access-token' })
    const id = String(res.headers['x-correlation-id'])
    t.match(id, GENERATED)
    t.equal((res.json() as { error: { correlation_id: string } }).error.correlation_id, id)
    t.ok(b.logs.lines().some(l => l.reqId === id && l.msg === 'internal api call'), 'the audit line has the id')
  })

  await t.test('every kind of answer carries the id and nosniff, errors of every stage included', async t => {
    const given = 'caller-given-id-0001'
    const json = { ...b.auth, 'content-type': 'application/json' }
    const answers: Array<[string, number, InjectOptions]> = [
      ['health', 200, { url: '/health/live' }],
      ['unknown route', 404, { url: '/no/such/route' }],
      ['no credentials', 401, { url: '/internal/v1/merchants/m_none/access-token' }],
      ['unknown merchant', 404, { url: '/internal/v1/merchants/m_none/access-token', headers: b.auth }],
      ['HEAD of an unknown merchant', 404, { method: 'HEAD', url: '/internal/v1/merchants/m_none/access-token', headers: b.auth }],
      ['invalid merchant id', 400, { url: '/internal/v1/merchants/bad.id/access-token', headers: b.auth }],
      ['URL too long', 414, { url: `/health/live?pad=${'x'.repeat(9000)}` }],
      ['malformed URL', 400, { url: '/internal/v1/merchants/%E0%A4%A/access-token', headers: b.auth }],
      ['unsupported body type', 415, { method: 'POST', url: '/internal/v1/onboarding-links', headers: { ...b.auth, 'content-type': 'application/xml' }, payload: '<x/>' }],
      ['body too large', 413, { method: 'POST', url: '/internal/v1/onboarding-links', headers: json, payload: JSON.stringify({ merchant_id: 'x'.repeat(17 * 1024) }) }],
      ['callback without a state (HTML)', 401, { url: '/oauth/callback?code=abc' }],
      ['malformed URL on a browser route (HTML)', 400, { url: '/oauth/callback/%ZZ?code=abc' }]
    ]
    for (const [what, status, request] of answers) {
      const res = await b.app.inject(request)
      t.equal(res.statusCode, status, `${what}: ${status}`)
      // Browser routes make a short reference (docs/api.md), the others a UUID.
      const made = String(request.url).startsWith('/oauth/') ? REFERENCE_PATTERN : GENERATED
      t.match(String(res.headers['x-correlation-id']), made, `${what}: a correlation id`)
      t.equal(res.headers['x-content-type-options'], 'nosniff', `${what}: nosniff`)
      const kept = await b.app.inject({ ...request, headers: { ...request.headers, 'x-correlation-id': given } })
      // Browser routes make their own: their id is shown on the page and must not be chosen by the sender.
      if (String(request.url).startsWith('/oauth/')) t.match(String(kept.headers['x-correlation-id']), REFERENCE_PATTERN, `${what}: its own id, not the caller's`)
      else t.equal(kept.headers['x-correlation-id'], given, `${what}: the caller's id`)
    }
  })
})

t.test('every request has its own logger, bound to its id, as request.log and reply.log', async t => {
  const b = await build(t, {
    routes: async (app) => {
      app.get('/test/log', (request, reply) => {
        request.log.info('from the request')
        ;(reply.log as Logger).setBindings({ extra: 'bound' })
        reply.log.warn('from the reply')
        return { same: request.log === reply.log }
      })
    }
  })
  const [one, two] = [await b.app.inject({ url: '/test/log' }), await b.app.inject({ url: '/test/log' })]
  t.same(one.json(), { same: true })
  const id = String(one.headers['x-correlation-id'])
  t.not(id, String(two.headers['x-correlation-id']))
  const lines = b.logs.lines().filter(l => l.reqId === id)
  t.match(lines, [{ level: 30, msg: 'from the request' }, { level: 40, msg: 'from the reply', extra: 'bound' }])
  t.equal(lines.length, 2)
  t.notOk(lines[0].extra, 'bindings added later do not change lines already written')
  t.equal(b.logs.lines().filter(l => l.reqId === String(two.headers['x-correlation-id'])).length, 2, 'the other request\'s lines carry its own id')
})
