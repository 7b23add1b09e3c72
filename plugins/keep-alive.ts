// Decorates `keepAlive`: the background renewal of refresh tokens (src/keep-alive.ts), with its
// metrics on the app's registry. Needs `config`, `redis`, `metrics`, `stores` (whose token store
// keeps the schedule on every write), `token-service` and `events` (merchant.refresh_token_expiring).
// Starts on ready, with the one-time scheduling of merchants stored before keep-alive
// existed (src/keep-alive-migration.ts); on close, waits for the renewals under way.
import fp from 'fastify-plugin'
import { Counter, Gauge, Histogram, type Registry } from 'prom-client'
import { createKeepAlive, type KeepAlive } from '../src/keep-alive.js'
import type { KeepAliveSchedule, ScheduleStats } from '../src/keep-alive-schedule.js'
import { startScheduleMigration } from '../src/keep-alive-migration.js'

declare module 'fastify' {
  interface FastifyInstance {
    keepAlive: KeepAlive
  }
}

/** The schedule's figures for a scrape, read at most once a second (three gauges share them). */
function statsReader (schedule: KeepAliveSchedule): () => Promise<ScheduleStats | undefined> {
  let last: { at: number, stats: Promise<ScheduleStats | undefined> } | undefined
  return async () => {
    if (last === undefined || Date.now() - last.at > 1000) {
      last = { at: Date.now(), stats: schedule.stats().catch(() => undefined) } // Redis away: no values
    }
    return await last.stats
  }
}

/** The keep-alive's metrics; the gauges read the schedule on scrape. */
function keepAliveMetrics (registry: Registry, stats: () => Promise<ScheduleStats | undefined>): { gauges: Gauge[], outcomes: Counter<'outcome'>, claims: Histogram } {
  const registers = [registry]
  const gauge = (name: string, help: string, value: (s: ScheduleStats) => number | undefined): Gauge => new Gauge({
    name,
    help,
    registers,
    async collect () {
      const s = await stats()
      const v = s === undefined ? undefined : value(s)
      if (v !== undefined) this.set(v)
    }
  })
  return {
    gauges: [
      gauge('cybs_keepalive_due', 'Merchants whose keep-alive renewal is due now (the backlog; read from Redis on scrape)', s => s.due),
      gauge('cybs_keepalive_scheduled', 'Merchants in the keep-alive schedule', s => s.size),
      gauge('cybs_keepalive_next_due_timestamp_seconds', 'When the earliest keep-alive renewal is due (Unix time; in the past while there is a backlog)',
        s => s.nextDueAt === undefined ? undefined : s.nextDueAt / 1000)
    ],
    outcomes: new Counter({ name: 'cybs_keepalive_renewals_total', help: 'Keep-alive renewals by outcome', labelNames: ['outcome'], registers }),
    claims: new Histogram({ name: 'cybs_keepalive_claim_size', help: 'Merchants claimed per keep-alive claim (0: nothing was due)', buckets: [0, 1, 2, 4, 8, 16, 32], registers })
  }
}

export default fp(async (app) => {
  const { config } = app
  const schedule = app.keepAliveSchedule
  const { outcomes, claims } = keepAliveMetrics(app.metrics.registry, statsReader(schedule))

  const keepAlive = createKeepAlive({
    schedule,
    store: app.tokenStore,
    service: app.tokenService,
    log: app.log.child({ component: 'keep-alive' }),
    intervalMs: config.keepAlive.intervalMs,
    // A forced refresh answers within CYBS_TIMEOUT_MS + 2 s; twice that covers a refresh that went
    // on in the background, so that no other replica starts a second one for the same due time.
    leaseMs: 2 * (config.cybs.timeoutMs + 2000),
    // Retries stay well inside the quarter of the margin that the due times leave free.
    backoffCapMs: Math.min(3600_000, config.keepAlive.renewBeforeSeconds * 1000 / 16),
    backoffBaseMs: Math.min(30_000, config.keepAlive.renewBeforeSeconds * 1000 / 256),
    // Keep-alive could not renew a token with less than 7 days left (at most once a day per merchant).
    onExpiring: (merchantId, expiresAt) => {
      app.events.emit('merchant.refresh_token_expiring', merchantId, { refresh_token_expires_at: new Date(expiresAt).toISOString() })
    },
    onLapsed: (merchantId, expiredAt) => {
      app.events.emit('merchant.reauthorization_required', merchantId, { reason: 'refresh_token_expired', refresh_token_expires_at: new Date(expiredAt).toISOString() })
    },
    events: {
      claimed: (n) => claims.observe(n),
      outcome: (outcome) => outcomes.inc({ outcome })
    }
  })
  app.decorate('keepAlive', keepAlive)
  let migration: ReturnType<typeof startScheduleMigration> | undefined
  app.addHook('onReady', async () => {
    keepAlive.start()
    migration = startScheduleMigration({ redis: app.redis, keys: app.redisKeys, store: app.tokenStore, schedule, log: app.log.child({ component: 'keep-alive' }) })
  })
  app.addHook('preClose', async () => {
    await Promise.all([keepAlive.stop(), migration?.stop()])
  })
}, { name: 'keep-alive', dependencies: ['config', 'redis', 'metrics', 'stores', 'token-service', 'events'] })
