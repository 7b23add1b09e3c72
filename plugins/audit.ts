// Decorates `audit`: the audit trail of the internal API (who called what for which merchant,
// with the outcome; never a token). Successful access-token lookups are summarized per caller and
// merchant every AUDIT_SUMMARY_SECONDS (0: a line each); every other call gets a line of its own.
// Owns the summary timer: flushed (in chunks, never stalling requests) when shutdown starts and
// once more at close, for the lookups that were still in flight. Needs `config`.
import { performance } from 'node:perf_hooks'
import fp from 'fastify-plugin'
import type { FastifyRequest } from 'fastify'
import { createLookupAudit } from '../src/lookup-audit.js'

export interface Audit {
  /** A successful lookup: counted into the next summary (or a line of its own). */
  lookup: (request: FastifyRequest, route: string, merchantId: string | undefined) => void
  /** Any other call: a line of its own. */
  call: (request: FastifyRequest, route: string, status: number, outcome: string, merchantId: string | undefined) => void
}

declare module 'fastify' {
  interface FastifyInstance {
    audit: Audit
  }
}

export default fp(async (app) => {
  const call: Audit['call'] = (request, route, status, outcome, merchantId) => {
    request.log.info({
      merchant_id: merchantId,
      route,
      method: request.method,
      status,
      outcome,
      duration_ms: Math.round((performance.now() - request.startedAt) * 10) / 10
    }, 'internal api call')
  }

  const seconds = app.config.auditSummarySeconds
  if (seconds === 0) {
    app.decorate('audit', { call, lookup: (request, route, merchantId) => { call(request, route, 200, 'ok', merchantId) } })
    return
  }
  const summary = createLookupAudit({ log: app.log, now: app.now })
  const flush = (): void => { summary.flush().catch((err: unknown) => { app.log.error({ err }, 'writing lookup summaries failed') }) }
  const timer = setInterval(flush, seconds * 1000)
  timer.unref()
  app.addHook('preClose', async () => { await summary.flush() })
  app.addHook('onClose', async () => {
    clearInterval(timer)
    await summary.flush()
  })
  app.decorate('audit', {
    call,
    lookup: (request, route, merchantId) => { summary.record(request.caller, route, merchantId ?? '') }
  })
}, { name: 'audit', dependencies: ['config'] })
