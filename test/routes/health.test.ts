// /health/live and /health/ready: readiness follows Redis through an outage
// (server killed) and a hang (server stopped with SIGSTOP, or paused: answered within a second),
// internal routes answer 503 storage_unavailable meanwhile, and everything recovers by itself.
import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { build, onboard, type Built } from '../helper.js'

/** Only a guard against a hung request, not a performance assertion. */
const HANG_GUARD_MS = 3000

interface Res { statusCode: number, body: string, json: () => any }

async function answered<T> (p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([
      p,
      new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer within ${HANG_GUARD_MS} ms`)), HANG_GUARD_MS) })
    ])
  } finally {
    clearTimeout(timer)
  }
}

const get = async (b: Built, url: string, headers: Record<string, string> = {}): Promise<Res> =>
  await answered(b.app.inject({ method: 'GET', url, headers }), `GET ${url}`)

/** Polls GET url until its status is `status`; returns the last response and the time it took. */
async function pollStatus (b: Built, url: string, status: number, timeoutMs: number): Promise<{ res: Res, ms: number }> {
  const started = Date.now()
  for (;;) {
    const res = await get(b, url)
    if (res.statusCode === status || Date.now() - started > timeoutMs) return { res, ms: Date.now() - started }
    await sleep(50)
  }
}

const errorCode = (res: Res): unknown => (res.json() as { error?: { code?: unknown } }).error?.code

/** The status and error code of an answer: a lookup's body holds a token and never goes into a message. */
function said (res: Res): string {
  let code: unknown
  try { code = errorCode(res) } catch {}
  return typeof code === 'string' ? `${res.statusCode} ${code}` : String(res.statusCode)
}

t.test('live and ready answer 200 while Redis is up', async t => {
  const b = await build(t)
  const live = await get(b, '/health/live')
  t.equal(live.statusCode, 200)
  t.same(live.json(), { status: 'ok' })
  const ready = await get(b, '/health/ready')
  t.equal(ready.statusCode, 200, said(ready))
  t.same(ready.json(), { status: 'ready' })
  // Health routes need no credentials and are not the internal API.
  t.notOk(/unauthorized/.test(ready.body))
})

t.test('Redis killed: ready 503 with a reason, internal routes 503 storage_unavailable, recovery by itself', async t => {
  const b = await build(t)
  t.equal((await onboard(b, 'mid_health_1')).statusCode, 200)
  // Loaded into the service's memory before the outage; the other merchant is not.
  const loaded = await get(b, '/internal/v1/merchants/mid_health_1/access-token', b.auth)
  t.equal(loaded.statusCode, 200, said(loaded))
  const token = loaded.json().access_token as string

  await b.redis.stop()
  // The outage shows within 2 s.
  const down = await pollStatus(b, '/health/ready', 503, 2000)
  t.equal(down.res.statusCode, 503, `ready reflects the outage (after ${down.ms} ms)`)
  t.match(down.res.json(), { status: 'unavailable', reason: /redis/ }, 'with a reason')

  const status = await get(b, '/internal/v1/merchants/mid_health_1', b.auth)
  t.equal(status.statusCode, 503, said(status))
  t.equal(errorCode(status), 'storage_unavailable')
  t.match(status.json(), { error: { message: String, correlation_id: String } })

  const list = await get(b, '/internal/v1/merchants', b.auth)
  t.equal(list.statusCode, 503, said(list))
  t.equal(errorCode(list), 'storage_unavailable')

  const unknown = await get(b, '/internal/v1/merchants/mid_never_loaded/access-token', b.auth)
  t.equal(unknown.statusCode, 503, 'a lookup that needs Redis: 503')
  t.equal(errorCode(unknown), 'storage_unavailable')

  // A fresh token loaded before the outage is served from memory, without Redis.
  const cached = await get(b, '/internal/v1/merchants/mid_health_1/access-token', b.auth)
  t.equal(cached.statusCode, 200, `the cached token is served: ${said(cached)}`)
  t.equal(cached.json().access_token, token, 'the token loaded before the outage')

  const refresh = await answered(b.app.inject({ method: 'POST', url: '/internal/v1/merchants/mid_health_1/refresh', headers: b.auth }), 'forced refresh')
  t.equal(refresh.statusCode, 503, said(refresh))
  t.equal(errorCode(refresh), 'storage_unavailable')

  // The bearer check does not depend on Redis.
  t.equal((await get(b, '/internal/v1/merchants/mid_health_1')).statusCode, 401)

  // Still answering, repeatedly, and still alive.
  for (let i = 0; i < 5; i++) t.equal((await get(b, '/health/ready')).statusCode, 503)
  t.equal((await get(b, '/health/live')).statusCode, 200, 'live stays 200 during the outage')
  t.equal(b.sim.control.stats().refreshes, 0, 'no refresh reached CyberSource')

  await b.redis.start()
  const up = await pollStatus(b, '/health/ready', 200, 10_000)
  t.equal(up.res.statusCode, 200, `ready flips back to 200 by itself (after ${up.ms} ms)`)
  t.same(up.res.json(), { status: 'ready' })
  // The restarted Redis is empty: the merchant is gone, but the route works again.
  const after = await get(b, '/internal/v1/merchants/mid_health_1', b.auth)
  t.equal(after.statusCode, 404, said(after))
  t.equal(errorCode(after), 'merchant_not_found')
  t.equal((await onboard(b, 'mid_health_2')).statusCode, 200, 'onboarding works again')
  t.equal((await get(b, '/internal/v1/merchants/mid_health_2', b.auth)).statusCode, 200)

  const errors = b.logs.lines().filter(l => l.msg === 'redis connection error')
  t.ok(errors.length >= 1, 'the outage was logged')
  t.ok(errors.length <= 2, `and not once per reconnect attempt (${errors.length})`)
  t.ok(b.logs.lines().some(l => l.msg === 'redis connection restored'), 'the recovery was logged')
})

t.test('Redis hung (SIGSTOP): ready answers 503 instead of waiting, internal routes 503', async t => {
  const b = await build(t)
  t.equal((await onboard(b, 'mid_hang')).statusCode, 200)
  const admin = new Redis(b.redis.url, { maxRetriesPerRequest: 1 })
  admin.on('error', () => {})
  const info = await admin.info('server')
  admin.disconnect()
  const pid = Number(/process_id:(\d+)/.exec(info)?.[1])
  t.ok(pid > 0, 'redis-server pid')
  process.kill(pid, 'SIGSTOP')
  let stopped = true
  const resume = (): void => { if (stopped) { process.kill(pid, 'SIGCONT'); stopped = false } }
  t.teardown(resume)

  const ready = await get(b, '/health/ready')
  t.equal(ready.statusCode, 503, said(ready))
  t.match(ready.json(), { status: 'unavailable', reason: /redis/ })

  const status = await get(b, '/internal/v1/merchants/mid_hang', b.auth)
  t.equal(status.statusCode, 503, said(status))
  t.equal(errorCode(status), 'storage_unavailable')
  t.equal((await get(b, '/health/live')).statusCode, 200)

  resume()
  const up = await pollStatus(b, '/health/ready', 200, 10_000)
  t.equal(up.res.statusCode, 200, `ready 200 once Redis answers again (after ${up.ms} ms)`)
  const again = await get(b, '/internal/v1/merchants/mid_hang', b.auth)
  t.equal(again.statusCode, 200, said(again))
  t.equal(again.json().merchant_id, 'mid_hang')
})

t.test('Redis paused (CLIENT PAUSE): ready answers 503 within a second, every time', async t => {
  const PAUSE_MS = 4000
  const b = await build(t)
  t.equal((await get(b, '/health/ready')).statusCode, 200, 'ready before the pause')
  const connect = (): Redis => {
    const r = new Redis(b.redis.url, { maxRetriesPerRequest: 1, commandTimeout: PAUSE_MS * 3 })
    r.on('error', () => {})
    t.teardown(() => r.disconnect())
    return r
  }
  const admin = connect()
  const probe = connect()
  await probe.ping()
  await admin.client('PAUSE', PAUSE_MS, 'ALL')
  const pausedAt = performance.now()
  // Proof that Redis hangs meanwhile: this PING is answered only when the pause ends.
  let pongAt: number | undefined
  const pong = probe.ping().then(() => { pongAt = performance.now() })

  const ms: number[] = []
  for (let i = 0; i < 3; i++) {
    const started = performance.now()
    const res = await get(b, '/health/ready')
    ms.push(performance.now() - started)
    t.equal(res.statusCode, 503, `attempt ${i}: 503`)
    t.match(res.json(), { status: 'unavailable', reason: /redis/ }, `attempt ${i}: with a reason`)
  }
  t.equal(pongAt, undefined, 'Redis was paused during every attempt')
  t.ok(performance.now() - pausedAt < PAUSE_MS, 'and the attempts ended before the pause did')
  // The fastest of three: scheduling noise on a busy machine does not decide it.
  t.ok(Math.min(...ms) < 1000, `answered within a second (${ms.map(Math.round).join(', ')} ms)`)
  t.ok(ms.every(m => m < 1500), 'every answer within 1.5 s')
  t.equal((await get(b, '/health/live')).statusCode, 200, 'live meanwhile')

  await pong
  t.ok(pongAt !== undefined && pongAt - pausedAt >= PAUSE_MS - 200, 'the probe was answered when the pause ended')
  const up = await pollStatus(b, '/health/ready', 200, 10_000)
  t.equal(up.res.statusCode, 200, `ready again after the pause (after ${up.ms} ms)`)
})
