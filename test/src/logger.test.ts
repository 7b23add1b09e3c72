// The per-request logger (src/logger.ts): pino's child is made at the request's first line, with
// the bindings given before it (the request id, the guard's caller) and after it; a request that
// writes nothing makes none; a route's own log level or serializers still get pino's child.
import t from 'tap'
import pino, { type Bindings, type ChildLoggerOptions } from 'pino'
import type { FastifyBaseLogger } from 'fastify'
import { captureLogs } from '../helper.js'
import { RequestLogger, loggerOptions } from '../../src/logger.js'

/** A root logger writing to a capture, seen through a parent that counts the children made of it. */
function root (level = 'info'): { log: FastifyBaseLogger, lines: () => Array<Record<string, unknown>>, children: () => number } {
  const logs = captureLogs()
  const pinoRoot = pino(loggerOptions(level) as pino.LoggerOptions, logs.stream)
  let made = 0
  const log = Object.create(pinoRoot, {
    child: { value: (bindings: Bindings, options?: ChildLoggerOptions) => { made++; return pinoRoot.child(bindings, options) } }
  }) as FastifyBaseLogger
  return { log, lines: logs.lines, children: () => made }
}

t.test('a request that writes nothing makes no child logger', async t => {
  const r = root()
  const log = new RequestLogger(r.log, { reqId: 'r1' })
  log.setBindings({ caller: 'payments' })
  t.equal(log.level, 'info')
  t.equal(r.children(), 0)
  t.same(r.lines(), [])
})

t.test('the first line makes the child once, with every binding given so far', async t => {
  const r = root()
  const log = new RequestLogger(r.log, { reqId: 'r2' })
  log.setBindings({ caller: 'payments' })
  log.info({ merchant_id: 'm_1' }, 'first')
  log.warn('second')
  t.equal(r.children(), 1)
  const [first, second] = r.lines()
  t.match(first, { reqId: 'r2', caller: 'payments', merchant_id: 'm_1', msg: 'first', level: 30 })
  t.match(second, { reqId: 'r2', caller: 'payments', msg: 'second', level: 40 })

  await t.test('bindings added later go to the child', async t => {
    log.setBindings({ route: '/x' })
    log.error('third')
    t.match(r.lines()[2], { reqId: 'r2', caller: 'payments', route: '/x', msg: 'third', level: 50 })
    t.equal(r.children(), 1)
  })
})

t.test('levels: lines below the level are dropped; the level can be changed per request', async t => {
  const r = root('info')
  const log = new RequestLogger(r.log, { reqId: 'r3' })
  log.debug('hidden')
  log.trace('hidden')
  t.same(r.lines(), [])
  log.level = 'debug'
  log.debug('shown')
  t.equal(log.level, 'debug')
  t.match(r.lines(), [{ reqId: 'r3', msg: 'shown', level: 20 }])
  t.equal(r.log.level, 'info', 'the root keeps its level')
})

t.test('child loggers carry the request bindings and their own; credentials stay redacted', async t => {
  const r = root()
  const log = new RequestLogger(r.log, { reqId: 'r4' })
  log.setBindings({ caller: 'payments' })
  log.child({ component: 'x' }).info({ authorization: 'Bearer secret-value' }, 'from child')
  const [line] = r.lines()
  t.match(line, { reqId: 'r4', caller: 'payments', component: 'x', msg: 'from child', authorization: '[redacted]' })
  t.notMatch(JSON.stringify(r.lines()), 'secret-value')
})
