// Keep-alive end to end: app instances on one Redis and the simulator over HTTP, with refresh
// tokens that live 12 s and a 10 s renewal margin, so merchants come due 2-4.5 s after each
// renewal. Merchants are onboarded through the app (as before keep-alive existed) and scheduled
// by the start-up migration. Nobody looks a token up: every refresh counted at the simulator is
// keep-alive's. A second refresh of a merchant for one due time would show up as two refreshes
// less than the 2 s minimum apart.
import t, { type Test } from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { build, onboard, until, type Built } from '../helper.js'
import { TOKEN_PATH } from '../../src/simulator/app.js'
import { createSubscriber } from '../../src/redis-client.js'
import { createTokenService, type TokenService } from '../../src/token-service.js'
import type { KeepAliveSchedule } from '../../src/keep-alive-schedule.js'
import { createKeepAlive, type KeepAlive, type KeepAliveOutcome } from '../../src/keep-alive.js'
import { migrateSchedule } from '../../src/keep-alive-migration.js'

t.setTimeout(180_000)

/** The app's own keep-alive (plugins/keep-alive.ts) ticks every 100 ms. */
const ACTIVE = { REFRESH_TOKEN_RENEW_BEFORE_SECONDS: '10', KEEPALIVE_INTERVAL_MS: '100' }
/**
 * The app's own keep-alive idle (its first tick is minutes away), so that the replicas a test
 * makes itself are the only ones renewing. The app's token store keeps the schedule all the same.
 */
const SHORT = {
  simulatorOptions: { refreshTokenTtlSeconds: 12 },
  env: { ...ACTIVE, KEEPALIVE_INTERVAL_MS: '600000' }
}
const REPLICA_INTERVAL_MS = 100
/** The least time between two renewals of one merchant: lifetime minus margin, less slack. */
const MIN_GAP_MS = 1500

interface Replica { schedule: KeepAliveSchedule, keepAlive: KeepAlive, outcomes: KeepAliveOutcome[], claims: number[] }

/** Keep-alive on a built app, as plugins/keep-alive.ts wires it, with a token service of its own over the app's store. */
async function replica (t: Test, b: Built, forceRefresh?: TokenService['forceRefresh']): Promise<Replica> {
  const keys = b.app.redisKeys
  const schedule = b.app.keepAliveSchedule
  const store = b.app.tokenStore
  const subscriber = createSubscriber(b.app.redis)
  subscriber.on('error', () => {})
  const service = createTokenService({
    redis: b.app.redis, subscriber, keys, store, client: b.app.tokenClient, log: b.app.log, answerWithinMs: b.config.cybs.timeoutMs + 2000, maxEntries: 100
  })
  await service.start()
  const outcomes: KeepAliveOutcome[] = []
  const claims: number[] = []
  const keepAlive = createKeepAlive({
    schedule,
    store,
    service: forceRefresh === undefined ? service : { forceRefresh },
    log: b.app.log,
    intervalMs: REPLICA_INTERVAL_MS,
    leaseMs: 2 * (b.config.cybs.timeoutMs + 2000),
    events: { outcome: o => outcomes.push(o), claimed: n => claims.push(n) }
  })
  t.teardown(async () => {
    await keepAlive.stop()
    await service.close()
  })
  return { schedule, keepAlive, outcomes, claims }
}

/** The times of the refresh requests the simulator received, per merchant (from the token's claim). */
function refreshesOf (b: Built): Map<string, number[]> {
  const per = new Map<string, number[]>()
  for (const r of b.sim.control.requests()) {
    if (!r.path.startsWith(TOKEN_PATH) || r.form.grant_type !== 'refresh_token') continue
    const payload = JSON.parse(Buffer.from(String(r.form.refresh_token).split('.')[1], 'base64url').toString()) as { merchant_id: string }
    per.set(payload.merchant_id, [...(per.get(payload.merchant_id) ?? []), r.receivedAt])
  }
  return per
}

const everyOne = (b: Built, ids: string[], n: number) => (): boolean => {
  const per = refreshesOf(b)
  return ids.every(id => (per.get(id)?.length ?? 0) >= n)
}

function assertNoDoubleRefresh (t: Test, b: Built): void {
  const gaps: number[] = []
  for (const times of refreshesOf(b).values()) for (let i = 1; i < times.length; i++) gaps.push(times[i] - times[i - 1])
  t.ok(gaps.every(g => g >= MIN_GAP_MS), `no merchant refreshed twice for one due time (shortest gap ${Math.min(...gaps)} ms)`)
}

async function onboardAll (t: Test, b: Built, ids: string[]): Promise<void> {
  for (const id of ids) t.equal((await onboard(b, id)).statusCode, 200, `${id} onboarded`)
}

const migrate = async (b: Built, r: Replica): Promise<void> => {
  await migrateSchedule({ redis: b.app.redis, keys: b.app.redisKeys, store: b.app.tokenStore, schedule: r.schedule, log: b.app.log })
}

t.test('merchants whose refresh tokens near expiry are refreshed with no lookup', async t => {
  const b = await build(t, SHORT)
  const ids = ['m1', 'm2', 'm3', 'm4', 'm5']
  await onboardAll(t, b, ids)
  const before = await Promise.all(ids.map(async id => (await b.app.tokenStore.getMeta(id))!.refreshTokenExpiresAt))
  const r = await replica(t, b)
  await migrate(b, r)
  t.equal((await r.schedule.stats()).size, 5, 'the migration scheduled every merchant')
  r.keepAlive.start()
  t.ok(await until(everyOne(b, ids, 1), 30_000), 'every merchant was refreshed')
  await r.keepAlive.stop()
  for (const [i, id] of ids.entries()) {
    const meta = await b.app.tokenStore.getMeta(id)
    t.ok(meta!.refreshTokenExpiresAt > before[i], `${id}: the refresh token lives on`)
    t.equal(meta!.status, 'connected')
    t.ok(await r.schedule.score(id), `${id}: scheduled again`)
  }
  t.ok(r.outcomes.includes('refreshed'))
  assertNoDoubleRefresh(t, b)
})

t.test('two replicas never refresh one merchant twice for one due time', async t => {
  const b1 = await build(t, SHORT)
  const b2 = await build(t, { ...SHORT, redis: b1.redis, simulator: b1.sim, secrets: b1.secrets })
  const ids = Array.from({ length: 12 }, (_, i) => `shared${i}`)
  await onboardAll(t, b1, ids)
  const [r1, r2] = [await replica(t, b1), await replica(t, b2)]
  await migrate(b1, r1)
  r1.keepAlive.start()
  r2.keepAlive.start()
  t.ok(await until(everyOne(b1, ids, 2), 40_000), 'every merchant was refreshed at two due times')
  await Promise.all([r1.keepAlive.stop(), r2.keepAlive.stop()])
  t.comment(`renewals: replica 1 ${r1.outcomes.filter(o => o === 'refreshed').length}, replica 2 ${r2.outcomes.filter(o => o === 'refreshed').length}`)
  assertNoDoubleRefresh(t, b1)
})

t.test('a replica killed mid-batch leaves no merchant unrenewed', async t => {
  // Refresh tokens of 24 s with a 20 s margin: the lease (8 s) runs out well before they expire.
  const longer = { simulatorOptions: { refreshTokenTtlSeconds: 24 }, env: { ...SHORT.env, REFRESH_TOKEN_RENEW_BEFORE_SECONDS: '20' } }
  const b1 = await build(t, longer)
  const b2 = await build(t, { ...longer, redis: b1.redis, simulator: b1.sim, secrets: b1.secrets })
  const ids = Array.from({ length: 6 }, (_, i) => `k${i}`)
  await onboardAll(t, b1, ids)
  const hung: Array<() => void> = []
  // Killed after its claim: its refreshes never come back, and it never touches the schedule again.
  const dead = await replica(t, b1, async () => await new Promise<never>((_resolve, reject) => { hung.push(() => reject(new Error('killed'))) }))
  t.teardown(() => { for (const kill of hung) kill() })
  const alive = await replica(t, b2)
  await migrate(b1, dead)
  t.ok(await until(async () => (await dead.schedule.stats()).due === 6, 15_000), 'all six are due')
  dead.keepAlive.tick().catch(() => {})
  t.ok(await until(() => dead.claims.length > 0, 5000))
  t.equal(dead.claims[0], 4, 'the killed replica had claimed four')
  alive.keepAlive.start()
  t.ok(await until(everyOne(b1, ids, 1), 30_000), 'every merchant was renewed by the other replica')
  await alive.keepAlive.stop()
  t.equal(hung.length, 4, 'the killed replica sent nothing to CyberSource')
  assertNoDoubleRefresh(t, b1)
})

t.test('invalid_grant: the merchant is marked by the token service and unscheduled', async t => {
  const b = await build(t, SHORT)
  await onboardAll(t, b, ['revoked', 'fine'])
  b.sim.control.revokeRefreshTokens('revoked')
  const r = await replica(t, b)
  await migrate(b, r)
  r.keepAlive.start()
  t.ok(await until(async () => await r.schedule.score('revoked') === undefined, 30_000), 'unscheduled')
  t.ok(await until(everyOne(b, ['fine'], 1), 30_000), 'the other merchant is renewed')
  await r.keepAlive.stop()
  t.equal((await b.app.tokenStore.getMeta('revoked'))!.status, 'reauthorization_required')
  t.equal(refreshesOf(b).get('revoked')?.length, 1, 'one attempt, never repeated')
  t.ok(r.outcomes.includes('reauthorization_required'))
})

t.test('merchants not due are untouched', async t => {
  const b = await build(t, { env: { KEEPALIVE_INTERVAL_MS: '600000' } }) // a year of refresh token, 30 days of margin
  await onboardAll(t, b, ['a', 'b', 'c'])
  const r = await replica(t, b)
  await migrate(b, r)
  r.keepAlive.start()
  await sleep(1000)
  await r.keepAlive.tick()
  await r.keepAlive.stop()
  t.equal(refreshesOf(b).size, 0, 'no refresh request')
  t.ok(r.claims.length >= 5 && r.claims.every(n => n === 0), 'every tick found nothing due')
  const margin = b.config.keepAlive.renewBeforeSeconds * 1000
  for (const id of ['a', 'b', 'c']) {
    const exp = (await b.app.tokenStore.getMeta(id))!.refreshTokenExpiresAt
    const due = await r.schedule.score(id) as number
    t.ok(due >= exp - margin && due <= exp - margin * 3 / 4, `${id} is due a margin before its expiry`)
  }
})

t.test('the plugin: schedules merchants stored before it, renews them, and shows it in /metrics', async t => {
  const before = await build(t, SHORT)
  await onboardAll(t, before, ['p1', 'p2', 'p3'])
  // As if they had been stored before keep-alive existed: no schedule, no migration done.
  await before.app.redis.del(before.app.redisKeys.keepAliveKey('due'), before.app.redisKeys.keepAliveKey('migration'))
  const b = await build(t, { ...SHORT, env: ACTIVE, redis: before.redis, simulator: before.sim, secrets: before.secrets })
  t.ok(await until(everyOne(b, ['p1', 'p2', 'p3'], 1), 30_000), 'renewed with no lookup')
  const metrics = (await b.app.inject({ url: '/metrics' })).body
  const renewed = /^cybs_keepalive_renewals_total\{outcome="refreshed"\} (\d+)/m.exec(metrics)
  t.ok(Number(renewed?.[1]) >= 3, 'renewals by outcome')
  t.match(metrics, /^cybs_keepalive_scheduled 3$/m, 'the schedule\'s size')
  t.match(metrics, /^cybs_keepalive_due \d+$/m, 'the backlog')
  t.match(metrics, /^cybs_keepalive_next_due_timestamp_seconds \d/m, 'the next due time')
  t.match(metrics, /^cybs_keepalive_claim_size_count \d+$/m, 'claim sizes')
})

t.test('keep-alive that cannot renew a token near its end emits merchant.refresh_token_expiring, once', async t => {
  // Refresh tokens of 12 s are always within 7 days of their end: a failed renewal is "expiring".
  const b = await build(t, { ...SHORT, env: ACTIVE })
  await onboardAll(t, b, ['exp_m'])
  b.sim.control.setBehavior({ fault: 'error_502_html', grantType: 'refresh_token' })
  const expiring = async (): Promise<Array<{ merchant_id: string }>> => {
    const res = await b.app.inject({ url: '/internal/v1/events?limit=500', headers: b.auth })
    return (res.json() as { items: Array<{ type: string, merchant_id: string }> }).items.filter(e => e.type === 'merchant.refresh_token_expiring')
  }
  t.ok(await until(async () => (await expiring()).length > 0, 30_000), 'the event is emitted')
  await sleep(1500)
  t.same((await expiring()).map(e => e.merchant_id), ['exp_m'], 'once, for the merchant, whatever the retries')
})
