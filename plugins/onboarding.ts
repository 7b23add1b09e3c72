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
    // A reload waits for the first callback's exchange as long as a lookup waits for a refresh.
    replayWaitMs: cybs.timeoutMs + 2000,
    events: app.events,
    now: app.now
  }))
  if (app.config.browserBinding === 'off') {
    app.log.warn('ONBOARDING_BROWSER_BINDING=off: callbacks are accepted from any browser, so a forged callback can link another merchant to a portal user')
  }
}, { name: 'onboarding', dependencies: ['config', 'stores', 'cybersource', 'events'] })
