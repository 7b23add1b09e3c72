// /internal: the bearer guard (encapsulated here, not global) and the audit trail: who called
// what for which merchant, with the outcome; never a token. Successful access-token lookups are
// summarized per caller and merchant (src/lookup-audit.ts, AUDIT_SUMMARY_SECONDS); every other
// call has its own line. Hooks are callback-style: this is the path of every lookup.
import { performance } from 'node:perf_hooks'
import type { FastifyInstance, FastifyRequest, onSendHookHandler } from 'fastify'
import { createLookupAudit } from '../../src/lookup-audit.js'
import { addBearerGuard } from './guard.js'
import merchantRoutes from './v1/merchants/index.js'
import onboardingLinkRoutes from './v1/onboarding-links.js'

const LOOKUP_ROUTE = '/internal/v1/merchants/:merchantId/access-token'

export default async function internalRoutes (app: FastifyInstance): Promise<void> {
  addBearerGuard(app)

  const seconds = app.config.auditSummarySeconds
  const summary = seconds > 0
    ? createLookupAudit({ log: app.log, intervalMs: seconds * 1000, route: LOOKUP_ROUTE, now: app.now })
    : undefined
  if (summary !== undefined) {
    // Written when shutdown starts, and once more at close for the lookups that were in flight.
    app.addHook('preClose', (done) => { summary.flush(); done() })
    app.addHook('onClose', (_app, done) => { summary.close(); done() })
  }

  // A call's own audit line (every call but the summarized lookups).
  const auditLine = (request: FastifyRequest, route: string, status: number, outcome: string, merchantId: string | undefined): void => {
    request.log.info({
      merchant_id: merchantId,
      route,
      method: request.method,
      status,
      outcome,
      duration_ms: Math.round((performance.now() - request.startedAt) * 10) / 10
    }, 'internal api call')
  }
  // A successful GET lookup is answered by its route itself, past Fastify's onSend hooks
  // (routes/internal/v1/merchants): it is counted and audited here.
  const lookupServed = (request: FastifyRequest, merchantId: string): void => {
    app.metrics.countLookup('ok')
    if (summary !== undefined) summary.record(request.caller, merchantId)
    else auditLine(request, LOOKUP_ROUTE, 200, 'ok', merchantId)
  }

  // Every other answer (errors, HEAD lookups, the other routes) is audited as it is sent: each
  // route gets its own onSend hook as it is added, knowing its URL (reading request.routeOptions
  // per call builds a frozen object). Not once it is written out (onResponse): an onResponse hook
  // makes Fastify attach listeners to every response.
  app.addHook('onRoute', (route) => {
    const url = route.url
    const lookup = url === LOOKUP_ROUTE
    const audit: onSendHookHandler = (request, reply, payload, done) => {
      const outcome = request.errorCode ?? 'ok'
      if (lookup) app.metrics.countLookup(outcome)
      // The merchant id is a path parameter, except for onboarding links (body).
      const bodyMerchantId = (request.body as { merchant_id?: unknown } | undefined)?.merchant_id
      const merchantId = (request.params as { merchantId?: string } | undefined)?.merchantId ??
        (typeof bodyMerchantId === 'string' ? bodyMerchantId : undefined)
      auditLine(request, url, reply.statusCode, outcome, merchantId)
      done(null, payload)
    }
    route.onSend = route.onSend === undefined ? audit : [route.onSend, audit].flat()
  })

  await app.register(merchantRoutes, { prefix: '/v1/merchants', lookupServed })
  await app.register(onboardingLinkRoutes, { prefix: '/v1/onboarding-links' })
}
