// The lookup summaries on their own: one line per caller, route and merchant with its count, first
// and last time; written in chunks between which the event loop runs other work, every summary
// exactly once however flushes overlap; and written without waiting for the timer once too many
// are pending.
import t from 'tap'
import type { Logger } from 'pino'
import { setImmediate as nextTurn } from 'node:timers/promises'
import { createLookupAudit } from '../../src/lookup-audit.js'

const ROUTE = '/internal/v1/merchants/:merchantId/access-token'

interface Line { caller: string, merchant_id: string, route: string, outcome: string, count: number, first_at: string, last_at: string }

/** A logger that keeps the summaries' objects (the audit calls info(object, message) only). */
function capture (): { lines: Line[], log: Pick<Logger, 'info'> } {
  const lines: Line[] = []
  const info = (obj: object, msg: string): void => {
    if (msg !== 'internal api lookups') throw new Error(`unexpected message ${msg}`)
    lines.push(obj as Line)
  }
  return { lines, log: { info: info as Logger['info'] } }
}

t.test('one line per caller and merchant, with the count and the first and last time', async t => {
  let now = Date.UTC(2030, 0, 1)
  const { lines, log } = capture()
  const audit = createLookupAudit({ log, now: () => now })
  audit.record('payments', ROUTE, 'm_a')
  now += 1000
  audit.record('payments', ROUTE, 'm_a')
  audit.record('reports', ROUTE, 'm_a')
  audit.record('payments', ROUTE, 'm_b')
  await audit.flush()
  t.same(lines.map(l => `${l.caller} ${l.merchant_id} ${l.count}`).sort(), ['payments m_a 2', 'payments m_b 1', 'reports m_a 1'])
  t.match(lines.find(l => l.caller === 'payments' && l.merchant_id === 'm_a'), {
    route: ROUTE, outcome: 'ok', first_at: '2030-01-01T00:00:00.000Z', last_at: '2030-01-01T00:00:01.000Z'
  })
  await audit.flush()
  t.equal(lines.length, 3, 'nothing pending: a flush writes nothing')
  audit.record('payments', ROUTE, 'm_a')
  await audit.flush()
  t.match(lines.at(-1), { caller: 'payments', merchant_id: 'm_a', count: 1 }, 'counted afresh after a flush')
})

t.test('a flush of 100,000 summaries yields to other work between chunks, and writes each once', async t => {
  const n = 100_000
  const { lines, log } = capture()
  const audit = createLookupAudit({ log, now: Date.now, chunk: 1000, maxPending: 10 * n })
  for (let i = 0; i < n; i++) audit.record('payments', ROUTE, `m_${i}`)
  t.equal(lines.length, 0, 'nothing written before the flush')

  let seenByImmediate = -1
  let seenByTimer = -1
  const flushed = audit.flush()
  const firstChunk = lines.length
  setImmediate(() => { seenByImmediate = lines.length })
  setTimeout(() => { seenByTimer = lines.length }, 0)
  await flushed
  t.equal(firstChunk, 0, 'written from the next turn on, not inside the call')
  t.ok(seenByImmediate >= 0 && seenByImmediate < n, `a setImmediate scheduled during the flush ran before it ended (${seenByImmediate} written then)`)
  t.ok(seenByTimer >= 0 && seenByTimer < n, `so did a timer (${seenByTimer} written then)`)
  t.equal(lines.length, n, 'every summary written')
  t.equal(new Set(lines.map(l => l.merchant_id)).size, n, 'each once')
})

t.test('overlapping flushes: every summary once, and each flush resolves once its own are written', async t => {
  const { lines, log } = capture()
  const audit = createLookupAudit({ log, now: Date.now, chunk: 10 })
  for (let i = 0; i < 100; i++) audit.record('payments', ROUTE, `first_${i}`)
  const first = audit.flush()
  await nextTurn()
  t.ok(lines.length > 0 && lines.length < 100, 'the first flush is under way')
  for (let i = 0; i < 50; i++) audit.record('payments', ROUTE, `second_${i}`)
  // Recorded again while its first summary may still be pending: a second summary, not a lost count.
  audit.record('payments', ROUTE, 'first_99')
  const second = audit.flush()
  await second
  t.equal(lines.length, 151, 'the second flush waited for its own summaries too')
  await first
  t.same(lines.slice(0, 100).map(l => l.merchant_id), Array.from({ length: 100 }, (_, i) => `first_${i}`), 'in order')
  t.equal(lines.filter(l => l.merchant_id === 'first_99').reduce((sum, l) => sum + l.count, 0), 2, 'counts add up')

  // The writer stopped: a later flush starts a new one.
  audit.record('reports', ROUTE, 'later')
  await audit.flush()
  t.match(lines.at(-1), { caller: 'reports', merchant_id: 'later' })
})

t.test('bounded: past maxPending summaries, they are written without waiting for the timer', async t => {
  const { lines, log } = capture()
  const audit = createLookupAudit({ log, now: Date.now, chunk: 4, maxPending: 10 })
  for (let i = 0; i < 25; i++) audit.record('payments', ROUTE, `m_${i}`)
  for (let i = 0; i < 10 && lines.length < 20; i++) await nextTurn()
  t.equal(lines.length, 20, 'two batches of 10 written by themselves')
  await audit.flush()
  t.equal(lines.length, 25, 'the rest at the next flush')
  t.equal(new Set(lines.map(l => l.merchant_id)).size, 25)
})
