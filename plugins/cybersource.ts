// Decorates `tokenClient` (CyberSource /oauth2/v3/token over mutual TLS). Needs `config`.
import fp from 'fastify-plugin'
import { createTokenClient, type TokenClient } from '../src/cybersource/token-client.js'

declare module 'fastify' {
  interface FastifyInstance {
    tokenClient: TokenClient
  }
}

export default fp(async (app) => {
  const { cybs } = app.config
  const client = createTokenClient({
    tokenUrl: cybs.tokenUrl,
    clientId: cybs.clientId,
    clientSecret: cybs.clientSecret,
    timeoutMs: cybs.timeoutMs,
    tls: cybs.tls,
    log: app.log.child({ component: 'cybersource' }),
    now: app.now,
    observe: (grantType, outcome, seconds) => app.metrics.upstreamDuration.observe({ grant_type: grantType, outcome }, seconds)
  })
  app.decorate('tokenClient', client)
  // Registered before the token service, so its preClose runs first: refreshes under way finish
  // their current attempt instead of retrying through the shutdown grace period.
  app.addHook('preClose', async () => { client.drain() })
  app.addHook('onClose', async () => { await client.close() })
}, { name: 'cybersource', dependencies: ['config', 'metrics'] })
