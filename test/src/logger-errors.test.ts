// Error log lines (src/logger.ts serializeError): ioredis puts a failed command's arguments on its
// errors, and for a write those are ciphertext and metadata. Real errors from a private Redis made
// read-only, and the shapes ioredis builds by hand, serialized and logged: no argument survives,
// the command's name and the message do, and the error itself is left as it was.
import t, { type Test } from 'tap'
import { pino } from 'pino'
import { Redis } from 'ioredis'
import { captureLogs } from '../helper.js'
import { startRedis } from '../helpers/redis.js'
import { loggerOptions, serializeError } from '../../src/logger.js'
import { storageCall } from '../../src/storage-errors.js'
import { StorageUnavailableError } from '../../src/errors.js'

const SECRET_ARG = 'ciphertext-v1.k1.SECRETARG0123456789'

/** Every key named `name` anywhere in a JSON-like value. */
function keysNamed (value: unknown, name: string, path = '$'): string[] {
  if (typeof value !== 'object' || value === null) return []
  const found: string[] = []
  for (const [k, v] of Object.entries(value)) {
    if (k === name) found.push(`${path}.${k}`)
    found.push(...keysNamed(v, name, `${path}.${k}`))
  }
  return found
}

/** Serialized as a log line would hold it. */
const asLogged = (err: Error): Record<string, unknown> => JSON.parse(JSON.stringify(serializeError(err))) as Record<string, unknown>

async function readOnlyRedis (t: Test): Promise<Redis> {
  const server = await startRedis(t)
  const redis = new Redis(server.url, { maxRetriesPerRequest: 1 })
  redis.on('error', () => {})
  t.teardown(() => redis.disconnect())
  // A replica of nothing (port 1 never hosts another test's Redis): reads work, writes answer
  // READONLY (an outage reply of storageCall).
  await redis.replicaof('127.0.0.1', 1)
  return redis
}

t.test('a failed write from Redis itself: the arguments are gone, the name and message stay', async t => {
  const redis = await readOnlyRedis(t)
  redis.defineCommand('testPut', { numberOfKeys: 1, lua: "redis.call('HSET', KEYS[1], 'access_token_enc', ARGV[1]) return 1" })
  const put = async (): Promise<unknown> => await (redis as unknown as { testPut: (k: string, v: string) => Promise<unknown> }).testPut('cybs:merchant:{m_1}', SECRET_ARG)

  const raw = await put().then(() => undefined, (err: unknown) => err as Error & { command?: { name: string, args: unknown[] } })
  t.ok(raw !== undefined, 'the write failed')
  t.match(raw?.message, /^READONLY/)
  t.ok(raw?.command?.args.includes(SECRET_ARG), 'ioredis put the arguments on the error')

  const direct = asLogged(raw as Error)
  t.same(keysNamed(direct, 'args'), [], 'no args anywhere')
  t.same(Object.keys(direct.command as object), ['name'], 'the command\'s name only')
  t.equal((direct.command as { name: unknown }).name, raw?.command?.name)
  t.match(direct, { type: 'ReplyError', message: /^READONLY/ })
  t.notOk(JSON.stringify(direct).includes(SECRET_ARG), 'no argument value anywhere')
  t.ok(raw?.command?.args.includes(SECRET_ARG), 'the error itself is left as it was')

  // As the stores throw it: wrapped as the cause of the 503.
  const wrapped = await storageCall(put).then(() => undefined, (err: unknown) => err as Error)
  t.ok(wrapped instanceof StorageUnavailableError, 'an outage reply becomes storage_unavailable')
  const logged = asLogged(wrapped as Error)
  t.same(keysNamed(logged, 'args'), [], 'no args anywhere')
  t.notOk(JSON.stringify(logged).includes(SECRET_ARG), 'no argument value anywhere')
  t.match(logged.message, /READONLY/, 'the cause\'s message is kept')
})

t.test('a failed transaction: the earlier errors and their arguments are gone', async t => {
  const redis = await readOnlyRedis(t)
  const raw = await redis.multi().hset('cybs:merchant:{m_2}', 'refresh_token_enc', SECRET_ARG).exec()
    .then(() => undefined, (err: unknown) => err as Error & { previousErrors?: Array<{ command?: { args: unknown[] } }> })
  t.ok(raw !== undefined, 'EXEC failed')
  t.ok(JSON.stringify(raw?.previousErrors?.map(e => e.command)).includes(SECRET_ARG), 'ioredis kept the queued command\'s arguments')
  const logged = asLogged(raw as Error)
  t.same(keysNamed(logged, 'args'), [])
  t.same(keysNamed(logged, 'previousErrors'), [])
  t.notOk(JSON.stringify(logged).includes(SECRET_ARG))
})

t.test('shapes ioredis builds itself: an aborted command, arguments on the error, a chain of causes', async t => {
  const aborted = Object.assign(new Error('Command aborted due to connection close'), { name: 'AbortError', command: { name: 'evalsha', args: ['sha', 1, 'k', SECRET_ARG] } })
  const topLevel = Object.assign(new Error('ERR something'), { args: [SECRET_ARG] })
  const chained = Object.assign(new Error('outer'), {
    cause: { command: { name: 'hset', args: [SECRET_ARG] }, args: [SECRET_ARG], cause: { command: { name: 'evalsha', args: [SECRET_ARG] } } }
  })
  for (const [what, err] of [['aborted', aborted], ['args on the error', topLevel], ['a chain of causes', chained]] as const) {
    const snapshot = (): string => JSON.stringify({ ...err, message: err.message })
    const before = snapshot()
    const logged = asLogged(err)
    t.same(keysNamed(logged, 'args'), [], `${what}: no args anywhere`)
    t.notOk(JSON.stringify(logged).includes(SECRET_ARG), `${what}: no argument value anywhere`)
    t.equal(snapshot(), before, `${what}: the error itself is left as it was`)
  }
  t.same(asLogged(aborted).command, { name: 'evalsha' })
  t.match(asLogged(chained), { cause: { command: { name: 'hset' }, cause: { command: { name: 'evalsha' } } } }, 'command names along the chain')
})

t.test('the service logger uses it for `err`', async t => {
  const redis = await readOnlyRedis(t)
  const logs = captureLogs()
  const log = pino(loggerOptions('info'), logs.stream)
  const raw = await redis.set('cybs:k', SECRET_ARG).then(() => undefined, (e: unknown) => e as Error)
  const wrapped = await storageCall(async () => await redis.set('cybs:k', SECRET_ARG)).then(() => undefined, (e: unknown) => e as Error)
  log.error({ err: raw }, 'raw')
  log.error({ err: wrapped }, 'wrapped')
  const [first, second] = logs.lines()
  t.match(first, { msg: 'raw', err: { type: 'ReplyError', message: /READONLY/, command: { name: 'set' } } })
  t.match(second, { msg: 'wrapped', err: { message: /READONLY/ } })
  t.same(keysNamed(logs.lines(), 'args'), [])
  t.notOk(logs.text().includes(SECRET_ARG), 'no argument value in the lines')
})
