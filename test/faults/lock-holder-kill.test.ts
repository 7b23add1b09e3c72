// The refresh lock's holder is a real process (a private build of the service) that is SIGKILLed
// while CyberSource is slow to answer its refresh. While it lived its lock was renewed, never long
// lived (its TTL stays within LOCK_TTL_MS); once it is dead, another replica serves the merchant a
// fresh token within 15 s.
import t from 'tap'
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { request } from 'undici'
import { build, envFor, onboard, secrets, startSimulator } from '../helper.js'
import { startRedis } from '../helpers/redis.js'
import { freePort } from '../../src/net-utils.js'
import { decodeJwtPayload } from '../../src/cybersource/jwt.js'
import { LOCK_TTL_MS } from '../../src/refresh-lock.js'
import { NO_RATE_LIMIT, ROOT, admin, assertRefreshTokenAlive, digest, errorCode, guarded, lookup, privateBuild, simReceived } from './helpers.js'

/** The most a dead holder may delay the merchant on the other replicas. */
const TAKEOVER_BOUND_MS = 15_000
/** Long enough to need renewals: more than one lock TTL. */
const WATCH_MS = LOCK_TTL_MS + 2000

t.test('SIGKILL of the refresh lock holder: the lock was renewed, not long lived; another replica takes over within 15 s', async t => {
  const dist = privateBuild(t)
  const redis = await startRedis(t)
  const s = secrets()
  // Every token is born with less than MIN_VALIDITY left: the first lookup must refresh first.
  const sim = await startSimulator(t, { clientSecret: s.clientSecret, accessTokenTtlSeconds: 30, rotateRefreshTokens: true })
  const local = await build(t, { redis, simulator: sim, secrets: s, env: NO_RATE_LIMIT })
  const a = admin(t, local)
  const mid = 'mid_lock_holder'
  t.equal((await onboard(local, mid)).statusCode, 200, 'onboarded')
  const onboarded = await a.stored(mid)

  const port = await freePort()
  const base = `http://127.0.0.1:${port}`
  // The child waits on CyberSource far longer than this test watches it.
  const env = envFor(s, redis.url, sim.url, { ...NO_RATE_LIMIT, CYBS_TIMEOUT_MS: '60000', HOST: '127.0.0.1', PORT: String(port), PUBLIC_BASE_URL: base })
  const child = spawn(process.execPath, [join(dist, 'src', 'server.js')], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.on('data', (c: Buffer) => { output = (output + c.toString()).slice(-20_000) })
  child.stderr.on('data', (c: Buffer) => { output = (output + c.toString()).slice(-20_000) })
  const exited = new Promise<NodeJS.Signals | null>(resolve => child.once('exit', (_code, signal) => resolve(signal)))
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })

  const ready = Date.now() + 20_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`the child exited with ${child.exitCode}:\n${output}`)
    const status = await request(`${base}/health/ready`).then(async r => { await r.body.dump(); return r.statusCode }, () => 0)
    if (status === 200) break
    if (Date.now() > ready) throw new Error(`the child did not become ready:\n${output}`)
    await sleep(100)
  }

  sim.control.setBehavior({ delayMs: 600_000, grantType: 'refresh_token' })
  // Answered only when the child dies (the connection breaks).
  const held = request(`${base}/internal/v1/merchants/${mid}/access-token`, { headers: local.auth, headersTimeout: 0, bodyTimeout: 0 })
    .then(async r => { await r.body.dump(); return r.statusCode }, () => 0)
  t.ok(await simReceived(sim, 'refresh_token', 1, 10_000), 'the child\'s refresh reached CyberSource')
  const lockKey = a.keys.lock(mid)
  const owner = await a.redis.get(lockKey)
  t.ok(owner !== null, 'the child holds the refresh lock')

  // While the holder lives: the key stays, with the same owner, and its TTL never exceeds LOCK_TTL_MS.
  const watchedFrom = Date.now()
  let maxTtl = -Infinity
  let minTtl = Infinity
  let sameOwner = true
  while (Date.now() - watchedFrom < WATCH_MS) {
    const [ttl, current] = await Promise.all([a.redis.pttl(lockKey), a.redis.get(lockKey)])
    maxTtl = Math.max(maxTtl, ttl)
    minTtl = Math.min(minTtl, ttl)
    if (current !== owner) sameOwner = false
    await sleep(200)
  }
  t.ok(sameOwner, `one owner held the lock for the ${WATCH_MS} ms watched`)
  t.ok(minTtl > 0, `the key never expired or lost its TTL (lowest PTTL ${minTtl})`)
  t.ok(maxTtl <= LOCK_TTL_MS, `its TTL never exceeded ${LOCK_TTL_MS} ms (highest PTTL ${maxTtl}): renewed, not long lived`)

  child.kill('SIGKILL')
  const killedAt = Date.now()
  t.equal(await guarded(exited, 5000, 'the child\'s exit'), 'SIGKILL')
  t.equal(await held, 0, 'the child\'s lookup never got an answer')
  sim.control.setBehavior({})

  // Lookups on the surviving replica: 503 while the dead holder's lock lives, then a fresh token.
  const statuses = new Map<string, number>()
  let servedAt: number | undefined
  let served: Record<string, unknown> | undefined
  while (servedAt === undefined && Date.now() - killedAt < TAKEOVER_BOUND_MS + 10_000) {
    const res = await guarded(lookup(local, mid), 10_000, 'lookup on the surviving replica')
    const key = `${res.statusCode} ${String(errorCode(res) ?? '')}`
    statuses.set(key, (statuses.get(key) ?? 0) + 1)
    if (res.statusCode === 200) {
      servedAt = Date.now()
      served = res.json()
    } else {
      await sleep(100)
    }
  }
  t.comment(`answers until the takeover: ${JSON.stringify(Object.fromEntries(statuses))}`)
  t.ok([...statuses.keys()].every(k => k === '200 ' || k === '503 upstream_unavailable'), 'meanwhile only 503 upstream_unavailable')
  t.ok(servedAt !== undefined && servedAt - killedAt <= TAKEOVER_BOUND_MS,
    `served within ${TAKEOVER_BOUND_MS} ms of the kill (${servedAt === undefined ? 'never' : `${servedAt - killedAt} ms`})`)
  const token = String(served?.access_token ?? '')
  t.ok(token !== '' && digest(token) !== digest(onboarded.accessToken), 'a fresh token')
  t.equal(decodeJwtPayload(token)?.merchant_id, mid, 'the merchant\'s own')
  t.equal(sim.control.stats().refreshes, 1, 'one refresh succeeded: the survivor\'s (the child\'s never got an answer)')
  t.equal(await a.redis.exists(lockKey), 0, 'the lock is released')
  await assertRefreshTokenAlive(t, local, a, mid)
})
