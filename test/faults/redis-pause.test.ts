// Redis that accepts connections but answers nothing for a while (CLIENT PAUSE … ALL): every
// request is answered within its bound (the Redis command timeout is 1 s; a lookup within
// CYBS_TIMEOUT_MS + 2 s), readiness says 503 within about a second, a DELETE answered 503 is not
// applied when Redis resumes, and everything works again afterwards.
import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { build, onboard } from '../helper.js'
import { REDIS_COMMAND_TIMEOUT_MS } from '../../src/redis-client.js'
import { FAILURES } from '../../src/pages.js'
import {
  NO_RATE_LIMIT, admin, assertRefreshTokenAlive, deleteMerchant, errorCode, forceRefresh, lookup, merchantStatus,
  pageTitle, pollStatus, timed
} from './helpers.js'

const PAUSE_MS = 4000
/** Scheduling slack on a busy machine, on top of each bound. */
const SLACK_MS = 1000

t.test('CLIENT PAUSE ALL: bounded 503s meanwhile, a refused DELETE stays refused, recovery after', async t => {
  const b = await build(t, { env: NO_RATE_LIMIT, simulatorOptions: { rotateRefreshTokens: true } })
  const a = admin(t, b)
  const answerWithinMs = b.config.cybs.timeoutMs + 2000
  for (const mid of ['mid_cached', 'mid_cold', 'mid_del']) t.equal((await onboard(b, mid)).statusCode, 200, `onboarded ${mid}`)
  const cachedToken = (await lookup(b, 'mid_cached')).json().access_token as string

  await a.redis.call('CLIENT', 'PAUSE', String(PAUSE_MS), 'ALL')
  const pausedAt = Date.now()
  const [ready, cold, cached, status, del, refresh, connect] = await Promise.all([
    timed(b.app.inject({ url: '/health/ready' })),
    timed(lookup(b, 'mid_cold')),
    timed(lookup(b, 'mid_cached')),
    timed(merchantStatus(b, 'mid_cold')),
    timed(deleteMerchant(b, 'mid_del')),
    timed(forceRefresh(b, 'mid_cached')),
    timed(b.app.inject({ url: '/oauth/connect' }))
  ])
  t.ok(Date.now() - pausedAt < PAUSE_MS, 'all of them answered while Redis was still paused')

  t.equal(ready.res.statusCode, 503, 'ready: 503')
  t.ok(ready.ms < 1000 + SLACK_MS, `ready answered within about a second (${Math.round(ready.ms)} ms)`)

  t.equal(cold.res.statusCode, 503, 'a lookup that needs Redis: 503')
  t.equal(errorCode(cold.res), 'storage_unavailable')
  t.ok(cold.ms < answerWithinMs + SLACK_MS, `within CYBS_TIMEOUT_MS + 2 s (${Math.round(cold.ms)} ms)`)

  t.ok(cached.res.statusCode === 200 || (cached.res.statusCode === 503 && errorCode(cached.res) === 'storage_unavailable'),
    `a lookup of a merchant in memory: 200 or 503 storage_unavailable (got ${cached.res.statusCode})`)
  if (cached.res.statusCode === 200) t.ok(cached.res.json().access_token === cachedToken, 'the token in memory')
  t.ok(cached.ms < answerWithinMs + SLACK_MS, `within CYBS_TIMEOUT_MS + 2 s (${Math.round(cached.ms)} ms)`)

  t.equal(status.res.statusCode, 503, 'status: 503')
  t.equal(errorCode(status.res), 'storage_unavailable')
  t.ok(status.ms < REDIS_COMMAND_TIMEOUT_MS + SLACK_MS, `within the command timeout (${Math.round(status.ms)} ms)`)

  t.equal(del.res.statusCode, 503, 'DELETE: 503')
  t.equal(errorCode(del.res), 'storage_unavailable')
  t.ok(del.ms < REDIS_COMMAND_TIMEOUT_MS + SLACK_MS, `within the command timeout (${Math.round(del.ms)} ms)`)

  t.equal(refresh.res.statusCode, 503, 'forced refresh: 503')
  t.equal(errorCode(refresh.res), 'storage_unavailable')
  t.ok(refresh.ms < answerWithinMs + SLACK_MS, `within CYBS_TIMEOUT_MS + 2 s (${Math.round(refresh.ms)} ms)`)

  t.equal(connect.res.statusCode, 503, '/oauth/connect: 503 page')
  t.equal(pageTitle(connect.res.body), FAILURES.storage_unavailable.title)
  t.ok(connect.ms < 2 * REDIS_COMMAND_TIMEOUT_MS + SLACK_MS, `within its Redis round trips (${Math.round(connect.ms)} ms)`)
  t.equal(b.sim.control.stats().refreshes, 0, 'nothing reached CyberSource')

  await sleep(Math.max(0, pausedAt + PAUSE_MS - Date.now()) + 200)
  t.equal((await pollStatus(b, '/health/ready', 200, 5000)).statusCode, 200, 'ready again after the pause')
  // The queued DELETE reached Redis after its deadline: refused there.
  t.equal(await a.redis.exists(a.keys.merchant('mid_del')), 1, 'the refused DELETE was not applied later')
  const kept = await merchantStatus(b, 'mid_del')
  t.equal(kept.statusCode, 200, 'the merchant still exists')
  t.equal(kept.json().status, 'connected')

  for (const mid of ['mid_cached', 'mid_cold', 'mid_del']) {
    t.equal((await lookup(b, mid)).statusCode, 200, `${mid}: lookups work`)
    await assertRefreshTokenAlive(t, b, a, mid)
  }
  t.equal((await onboard(b, 'mid_after')).statusCode, 200, 'onboarding works')
  t.equal((await deleteMerchant(b, 'mid_del')).statusCode, 204, 'a DELETE now works')
  t.equal((await merchantStatus(b, 'mid_del')).statusCode, 404)
})
