// Decorates `metrics`: a prom-client registry of its own per app instance (tests build several in
// one process) with the service's counters and histograms plus the default process metrics.
// Labels never carry a merchant id or a secret.
import fp from 'fastify-plugin'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

export interface Metrics {
  registry: Registry
  lookups: Counter<'outcome'>
  /**
   * Counts one access-token lookup: a plain tally on the hot path, added to `lookups` whenever it
   * is collected (prom-client's inc hashes its labels on every call).
   */
  countLookup: (outcome: string) => void
  refreshes: Counter<'outcome'>
  refreshDuration: Histogram<'outcome'>
  lockWaits: Counter<'outcome'>
  lockWaitDuration: Histogram<'outcome'>
  callbacks: Counter<'outcome'>
  upstreamDuration: Histogram<'grant_type' | 'outcome'>
  merchants: Gauge<'status'>
  keyUnavailable: Counter
  /** Callbacks whose state was valid but came from another browser (counted whether binding is required or off). */
  bindingFailures: Counter<'enforced'>
  /** 1 when ONBOARDING_BROWSER_BINDING=off. */
  bindingDisabled: Gauge
  /** Onboardings refused because a client, or all clients together, hold too many states. */
  statesRefused: Counter<'scope'>
  onboardingLinks: Counter<'event'>
  /** Merchants whose access token this replica keeps in memory (read on scrape). */
  tokenCacheEntries: Gauge
  /** Lifecycle events appended to the log, by type; and those lost (outbox full or shut down while Redis was away). */
  events: Counter<'type'>
  eventsDropped: Counter
  /** Webhook attempts by outcome (success, http_error, timeout, network_error), deliveries by outcome (delivered, dead). */
  webhookAttempts: Counter<'outcome'>
  webhookDeliveries: Counter<'outcome'>
  /** Deliveries waiting (pending) and given up (dead), read on scrape from webhookBacklogSource (set by plugins/events.ts). */
  webhookBacklog: Gauge<'state'>
  webhookBacklogSource?: () => Promise<Record<string, number>>
}

declare module 'fastify' {
  interface FastifyInstance {
    metrics: Metrics
  }
}

const MERCHANT_GAUGE_TTL_MS = 30_000

export default fp(async (app) => {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  const registers = [registry]
  const latency = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

  // Merchant counts are read from the counters the store keeps (src/merchant-counts.ts), at most
  // every 30 s, on scrape.
  let counted: { at: number, counts: Record<string, number> } | undefined
  let counting: Promise<Record<string, number>> | undefined
  const uncountedLookups = new Map<string, number>()
  const metrics: Metrics = {
    registry,
    lookups: new Counter({
      name: 'cybs_token_lookups_total',
      help: 'Access-token lookups by outcome',
      labelNames: ['outcome'],
      registers,
      collect () {
        for (const [outcome, n] of uncountedLookups) this.inc({ outcome }, n)
        uncountedLookups.clear()
      }
    }),
    countLookup: (outcome) => { uncountedLookups.set(outcome, (uncountedLookups.get(outcome) ?? 0) + 1) },
    refreshes: new Counter({ name: 'cybs_token_refreshes_total', help: 'Token refreshes by outcome', labelNames: ['outcome'], registers }),
    refreshDuration: new Histogram({ name: 'cybs_token_refresh_duration_seconds', help: 'Time of a refresh, CyberSource call and retries included', labelNames: ['outcome'], buckets: latency, registers }),
    lockWaits: new Counter({ name: 'cybs_refresh_lock_waits_total', help: 'Lookups that waited on another replica\'s refresh, by outcome', labelNames: ['outcome'], registers }),
    lockWaitDuration: new Histogram({ name: 'cybs_refresh_lock_wait_seconds', help: 'Time spent waiting on another replica\'s refresh', labelNames: ['outcome'], buckets: latency, registers }),
    callbacks: new Counter({ name: 'cybs_oauth_callbacks_total', help: 'OAuth callbacks by outcome', labelNames: ['outcome'], registers }),
    keyUnavailable: new Counter({ name: 'cybs_encryption_key_unavailable_total', help: 'Records that could not be read: their key id is not in TOKEN_ENCRYPTION_KEYS', registers }),
    bindingFailures: new Counter({ name: 'cybs_onboarding_browser_mismatch_total', help: 'Callbacks with a valid state from another browser than the one that started the onboarding', labelNames: ['enforced'], registers }),
    bindingDisabled: new Gauge({ name: 'cybs_onboarding_browser_binding_disabled', help: '1 when ONBOARDING_BROWSER_BINDING=off', registers }),
    statesRefused: new Counter({ name: 'cybs_onboarding_states_refused_total', help: 'Onboardings refused by the cap on outstanding states, per client or in total', labelNames: ['scope'], registers }),
    onboardingLinks: new Counter({ name: 'cybs_onboarding_links_total', help: 'Onboarding links created, visited, connected and failed', labelNames: ['event'], registers }),
    tokenCacheEntries: new Gauge({
      name: 'cybs_token_cache_entries',
      help: 'Merchants whose access token this replica keeps in memory (TOKEN_CACHE_MAX_ENTRIES at most)',
      registers,
      collect () { if (app.hasDecorator('tokenService')) this.set(app.tokenService.cacheSize()) }
    }),
    events: new Counter({ name: 'cybs_events_total', help: 'Lifecycle events appended to the event log, by type', labelNames: ['type'], registers }),
    eventsDropped: new Counter({ name: 'cybs_events_dropped_total', help: 'Lifecycle events lost before reaching the event log (outbox full or shut down while Redis was away)', registers }),
    webhookAttempts: new Counter({ name: 'cybs_webhook_attempts_total', help: 'Webhook POSTs by outcome', labelNames: ['outcome'], registers }),
    webhookDeliveries: new Counter({ name: 'cybs_webhook_deliveries_total', help: 'Webhook deliveries ended: delivered, or dead after retrying for 24 h', labelNames: ['outcome'], registers }),
    webhookBacklog: new Gauge({
      name: 'cybs_webhook_backlog',
      help: 'Webhook deliveries waiting (pending) and given up (dead), across replicas',
      labelNames: ['state'],
      registers,
      async collect () {
        const counts = await metrics.webhookBacklogSource?.().catch(() => undefined)
        if (counts !== undefined) for (const [state, n] of Object.entries(counts)) this.set({ state }, n)
      }
    }),
    upstreamDuration: new Histogram({ name: 'cybs_upstream_request_duration_seconds', help: 'CyberSource token requests by grant type and outcome', labelNames: ['grant_type', 'outcome'], buckets: latency, registers }),
    merchants: new Gauge({
      name: 'cybs_merchants',
      help: 'Stored merchants by the status last written (refreshed at most every 30 s)',
      labelNames: ['status'],
      registers,
      async collect () {
        if (counted === undefined || app.now() - counted.at > MERCHANT_GAUGE_TTL_MS) {
          // Concurrent scrapes share one read.
          counting ??= app.tokenStore.countByStatus().finally(() => { counting = undefined })
          try {
            counted = { at: app.now(), counts: await counting }
          } catch {
            return // Redis away: keep the last values
          }
        }
        for (const [status, n] of Object.entries(counted.counts)) this.set({ status }, n)
      }
    })
  }
  metrics.bindingDisabled.set(app.config.browserBinding === 'off' ? 1 : 0)
  app.decorate('metrics', metrics)
}, { name: 'metrics', dependencies: ['config'] })
