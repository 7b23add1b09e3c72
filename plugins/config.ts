// Decorates `config` (the validated Config) and `now` (the clock, injectable by tests).
import fp from 'fastify-plugin'
import type { Config } from '../src/config.js'

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
    now: () => number
  }
}

export default fp<{ config: Config, now?: () => number }>(async (app, opts) => {
  app.decorate('config', opts.config)
  app.decorate('now', opts.now ?? Date.now)
}, { name: 'config' })
