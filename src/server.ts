// The process: validates the environment, builds the server, installs graceful shutdown, listens.
import closeWithGrace from 'close-with-grace'
import { loadConfigOrExit } from './config.js'
import app, { createServer } from './app.js'

const config = loadConfigOrExit(process.env)

const server = createServer(config, { pretty: process.stdout.isTTY && process.env.NODE_ENV !== 'production' })
await server.register(app, { config })

closeWithGrace({ delay: config.shutdownGraceMs }, async ({ signal, err }) => {
  if (err !== undefined) server.log.error({ err }, 'shutting down after an error')
  else server.log.info({ signal }, 'shutting down')
  await server.close()
})

// Binds INTERNAL_PORT too when set, and fails if either port cannot be bound; server.close()
// above drains both (src/listeners.ts). Each listener logs its address.
await server.listen({ host: config.host, port: config.port })
