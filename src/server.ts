// The process: validates the environment, builds the server, installs graceful shutdown, listens.
import closeWithGrace from 'close-with-grace'
import { ConfigError, loadConfig, type Config } from './config.js'
import app, { createServer } from './app.js'

let config: Config
try {
  config = loadConfig(process.env)
} catch (err) {
  if (!(err instanceof ConfigError)) throw err
  for (const line of err.problems) process.stderr.write(`configuration error: ${line}\n`)
  process.exit(1)
}

const server = createServer(config, { pretty: process.stdout.isTTY && process.env.NODE_ENV !== 'production' })
await server.register(app, { config })

closeWithGrace({ delay: config.shutdownGraceMs }, async ({ signal, err }) => {
  if (err !== undefined) server.log.error({ err }, 'shutting down after an error')
  else server.log.info({ signal }, 'shutting down')
  await server.close()
})

await server.listen({ host: config.host, port: config.port })
