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

await server.listen({ host: config.host, port: config.port })
