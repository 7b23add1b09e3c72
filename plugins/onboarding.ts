// Decorates `onboarding` (authorize URL + callback completion). Needs the stores and the token client.
import fp from 'fastify-plugin'
import { createOnboarding, type Onboarding } from '../src/onboarding.js'

declare module 'fastify' {
  interface FastifyInstance {
    onboarding: Onboarding
  }
}

export default fp(async (app) => {
  const { cybs } = app.config
  app.decorate('onboarding', createOnboarding({
    authorizeUrl: cybs.authorizeUrl,
    clientId: cybs.clientId,
    redirectUrl: cybs.redirectUrl,
    stateStore: app.stateStore,
    linkStore: app.linkStore,
    tokenStore: app.tokenStore,
    tokenClient: app.tokenClient,
    bindingRequired: app.config.browserBinding === 'required',
    // A reload waits out the first callback: its exchange (CYBS_TIMEOUT_MS in all), the retries
    // of the tokens' write (1.5 s), the link's and the outcome's writes.
    replayWaitMs: cybs.timeoutMs + 4000,
    events: app.events,
    now: app.now
  }))
  // The binding cookie is scoped to PUBLIC_BASE_URL: a callback elsewhere never brings it back.
  const base = new URL(app.config.publicBaseUrl)
  const redirect = new URL(cybs.redirectUrl)
  if (app.config.browserBinding === 'required' && (redirect.origin !== base.origin || !redirect.pathname.startsWith(`${base.pathname.replace(/\/+$/, '')}/oauth/`))) {
    app.log.warn('CYBS_REDIRECT_URL is outside PUBLIC_BASE_URL/oauth/: browsers will not bring the binding cookie to the callback, and every callback will be refused (browser_mismatch)')
  }
  if (app.config.browserBinding === 'off') {
    app.log.warn('ONBOARDING_BROWSER_BINDING=off: callbacks are accepted from any browser, so a forged callback can link another merchant to a portal user')
  }
}, { name: 'onboarding', dependencies: ['config', 'stores', 'cybersource', 'events'] })
