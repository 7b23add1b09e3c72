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
    tokenStore: app.tokenStore,
    tokenClient: app.tokenClient,
    now: app.now
  }))
}, { name: 'onboarding', dependencies: ['config', 'stores', 'cybersource'] })
