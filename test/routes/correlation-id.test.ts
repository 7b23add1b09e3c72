// Correlation ids (src/app.ts): every response carries x-correlation-id; a well-formed id sent by
// the caller is kept, anything else is replaced by a random one (128 bits as 32 hex characters,
// never a counter); error bodies and log lines carry the same id.
import t from 'tap'
import { build } from '../helper.js'
import type { Logger } from 'pino'

const GENERATED = /^[0-9a-f]{32}$/

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
