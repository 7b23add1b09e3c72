// The keep-alive schedule with 100,000 merchants (`npm run bench:keepalive`): Redis commands and
// time per tick when nothing is due and when 1 % is due, and what one renewal costs.
//
// The 99,000 merchants that are not due exist only as schedule entries, seeded with ZADD: the
// claimer reads nothing of a merchant before its entry is due, so their records would change no
// figure (and writing 100,000 encrypted records would take most of the run). The 1,000 due ones
// are real: onboarded at the simulator (in process, over HTTP), stored through the wrapped token
// store, renewed by the real token service (lock, refresh, compare-and-set write). Commands are
// counted with MONITOR: those the service sends, and those its scripts run inside Redis. Writes its
// subsection of bench/RESULTS.md (bench/keepalive-report.ts) and prints it after its progress lines.
import { randomBytes } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import { Redis } from 'ioredis'
import { startRedisServer } from '../src/redis-server.js'
import { buildSimulator } from '../src/simulator/app.js'
import { createTokenClient } from '../src/cybersource/token-client.js'
import { createKeyRing } from '../src/key-ring.js'
import { createRedisKeys } from '../src/redis-keys.js'
import { createTokenStore } from '../src/token-store.js'
import { createTokenService } from '../src/token-service.js'
import { createKeepAliveSchedule, withKeepAlive } from '../src/keep-alive-schedule.js'
import { createKeepAlive } from '../src/keep-alive.js'
import { load, machine, resultsPath, writePart } from './lifecycle-report.js'
import { renderKeepAlive, type Counted } from './keepalive-report.js'

const TOTAL = Number(process.env.KEEPALIVE_MERCHANTS ?? 100_000)
const DUE = Math.round(TOTAL / 100)
const IDLE_TICKS = Number(process.env.KEEPALIVE_IDLE_TICKS ?? 1000)
const RENEW_BEFORE_S = 30 * 24 * 3600
const DAY = 24 * 3600_000
const silent = { info: () => {}, warn: () => {}, error: () => {} }

/** Counts the commands Redis runs while `fn` does, from a MONITOR connection. */
async function counted<T> (url: string, fn: () => Promise<T>): Promise<{ result: T, commands: Counted }> {
  const base = new Redis(url)
  const monitor = await base.monitor()
  const commands: Counted = { sent: 0, inScripts: 0, byName: new Map() }
  monitor.on('monitor', (_time: string, args: string[], source: string) => {
    if (source === 'lua') commands.inScripts++
    else commands.sent++
    const name = String(args[0]).toLowerCase()
    commands.byName.set(name, (commands.byName.get(name) ?? 0) + 1)
  })
  await new Promise(resolve => setTimeout(resolve, 100))
  const result = await fn()
  await new Promise(resolve => setTimeout(resolve, 200)) // the monitor stream catches up
  monitor.disconnect()
  base.disconnect()
  return { result, commands }
}

const quantile = (xs: number[], q: number): number => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))]
const us = (ms: number): string => `${(ms * 1000).toFixed(0)} µs`
const names = (c: Counted): string => [...c.byName].sort((a, b) => b[1] - a[1]).map(([n, k]) => `${n} ${k}`).join(', ')

async function main (): Promise<void> {
  const loadBefore = load()
  const server = await startRedisServer({ args: ['--save', '', '--appendonly', 'no'], label: 'bench-keepalive' })
  const clientSecret = randomBytes(18).toString('base64url')
  const sim = buildSimulator({ clientId: 'bench', clientSecret })
  await sim.app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = sim.app.server.address() as { port: number }
  const redis = new Redis(server.url)
  const subscriber = redis.duplicate()
  const client = createTokenClient({ tokenUrl: `http://127.0.0.1:${port}/oauth2/v3/token`, clientId: 'bench', clientSecret, timeoutMs: 10_000, log: silent })
  try {
    const keys = createRedisKeys('cybs:')
    const schedule = createKeepAliveSchedule(redis, keys, { renewBeforeSeconds: RENEW_BEFORE_S })
    const store = withKeepAlive(createTokenStore(redis, createKeyRing([{ kid: 'k1', key: randomBytes(32) }]), keys), schedule)
    const service = createTokenService({ redis, subscriber, keys, store, client, log: silent, answerWithinMs: 12_000, maxEntries: 0 })
    await service.start()
    const keepAlive = createKeepAlive({ schedule, store, service, log: silent, intervalMs: 5000, leaseMs: 24_000 })

    const now = Date.now()
    const key = keys.keepAliveKey('due')
    for (let i = 0; i < TOTAL - DUE; i += 1000) {
      const args: Array<string | number> = []
      for (let j = i; j < Math.min(i + 1000, TOTAL - DUE); j++) args.push(now + DAY + Math.floor(Math.random() * 300 * DAY), `idle${j}`)
      await redis.zadd(key, ...args)
    }
    const memory = await redis.memory('USAGE', key) ?? 0
    console.log(`schedule: ${TOTAL - DUE} entries seeded, ${memory} bytes (${(memory / (TOTAL - DUE)).toFixed(0)} per merchant)`)

    // Nothing due: the claim is all a tick does.
    for (let i = 0; i < 50; i++) await keepAlive.tick() // warm-up
    // Timed without MONITOR (which slows Redis down), counted with it.
    const idleTimes: number[] = []
    for (let i = 0; i < IDLE_TICKS; i++) {
      const t0 = performance.now()
      await keepAlive.tick()
      idleTimes.push(performance.now() - t0)
    }
    const idle = await counted(server.url, async () => { for (let i = 0; i < IDLE_TICKS; i++) await keepAlive.tick() })
    console.log(`idle tick (${TOTAL - DUE} scheduled, none due), ${IDLE_TICKS} ticks: ${idle.commands.sent / IDLE_TICKS} command(s) sent and ${idle.commands.inScripts / IDLE_TICKS} run in scripts per tick; ` +
      `time per tick p50 ${us(quantile(idleTimes, 0.5))}, p90 ${us(quantile(idleTimes, 0.9))}, p99 ${us(quantile(idleTimes, 0.99))}`)

    // 1 % due: real merchants whose refresh tokens entered the margin; twice, counted with
    // MONITOR then timed without it.
    const onboardDue = async (prefix: string): Promise<void> => {
      for (let i = 0; i < DUE; i += 50) {
        await Promise.all(Array.from({ length: Math.min(50, DUE - i) }, async (_, k) => {
          const id = `${prefix}${i + k}`
          const tokens = await client.exchangeCode(sim.control.issueCode(id))
          await store.put({
            merchantId: id,
            status: 'connected',
            scope: tokens.scope,
            clientStatus: tokens.clientStatus,
            connectedAt: now - 340 * DAY,
            accessTokenExpiresAt: tokens.accessTokenExpiresAt,
            refreshTokenExpiresAt: Date.now() + 20 * DAY, // inside the 30-day margin: due now
            lastRefreshedAt: null,
            accessToken: tokens.accessToken,
            refreshToken: tokens.refreshToken
          })
        }))
      }
    }
    const drain = async (): Promise<{ renewed: number, seconds: number, ticks: number[], claims: number[] }> => {
      const ticks: number[] = []
      const claims: number[] = []
      const timed = createKeepAlive({
        schedule: {
          ...schedule,
          claim: async (limit, until) => {
            const t1 = performance.now()
            try { return await schedule.claim(limit, until) } finally { claims.push(performance.now() - t1) }
          }
        },
        store,
        service,
        log: silent,
        intervalMs: 5000,
        leaseMs: 24_000
      })
      const started = performance.now()
      let renewed = 0
      while (renewed < DUE) {
        const t1 = performance.now()
        const n = await timed.tick()
        ticks.push(performance.now() - t1)
        if (n === 0) break
        renewed += n
      }
      return { renewed, seconds: (performance.now() - started) / 1000, ticks, claims }
    }
    await onboardDue('counted')
    console.log(`${DUE} due merchants onboarded; due now: ${(await schedule.stats()).due}`)
    const count = await counted(server.url, drain)
    const c = count.commands
    console.log(`per renewal: ${(c.sent / count.result.renewed).toFixed(1)} commands sent, ${(c.inScripts / count.result.renewed).toFixed(1)} run in scripts (${names(c)})`)
    await onboardDue('timed')
    const { renewed, seconds, ticks, claims } = await drain()
    const leftDue = (await schedule.stats()).due
    console.log(`1 % due (${DUE} of ${TOTAL}), one replica, 4 at a time: ${ticks.length} ticks, ${renewed} renewed in ${seconds.toFixed(2)} s ` +
      `(${(renewed / seconds).toFixed(0)}/s against the simulator on loopback); the claim p50 ${us(quantile(claims, 0.5))}, p99 ${us(quantile(claims, 0.99))}; ` +
      `a tick (claim + 4 renewals) p50 ${us(quantile(ticks, 0.5))}, p99 ${us(quantile(ticks, 0.99))}`)
    const refreshes = sim.control.stats().refreshes
    console.log(`left due: ${leftDue}; simulator refreshes: ${refreshes} (${2 * DUE} expected)`)
    const section = renderKeepAlive({
      date: new Date().toISOString(),
      machine: await machine(redis),
      load: [loadBefore, load()],
      total: TOTAL,
      due: DUE,
      idleEntries: TOTAL - DUE,
      scheduleBytes: memory,
      idleTicks: IDLE_TICKS,
      idle: { commands: idle.commands, times: idleTimes },
      renewal: { commands: c, counted: count.result.renewed, renewed, seconds, ticks, claims },
      leftDue,
      refreshes
    })
    writePart(resultsPath(), 'keepalive', section)
    process.stdout.write(`\n${section}`)
    await keepAlive.stop()
    await service.close()
  } finally {
    await client.close()
    redis.disconnect()
    subscriber.disconnect()
    await sim.app.close()
    await server.close()
  }
}

main().catch((err: unknown) => {
  console.error(err)
  process.exitCode = 1
})
