// Standalone CyberSource simulator (`npm run simulator`). A separate development program, so it
// reads its own few environment variables here rather than through src/config.ts.
import { readFileSync } from 'node:fs'
import { AUTHORIZE_PATH, TOKEN_PATH, buildSimulator, type SimulatorOptions } from './app.js'

function fail (message: string): never {
  console.error(`simulator: ${message}`)
  process.exit(1)
}

const env = process.env
const host = env.SIMULATOR_HOST ?? '127.0.0.1'
const port = Number(env.SIMULATOR_PORT ?? 4010)
if (!Number.isInteger(port) || port < 0 || port > 65535) fail('SIMULATOR_PORT: must be a port number')

const tlsFiles = {
  cert: env.SIMULATOR_TLS_CERT_FILE,
  key: env.SIMULATOR_TLS_KEY_FILE,
  ca: env.SIMULATOR_TLS_CA_FILE
}
let https: SimulatorOptions['https']
const given = Object.values(tlsFiles).filter(v => v !== undefined && v !== '').length
if (given > 0) {
  if (given < 3) fail('SIMULATOR_TLS_CERT_FILE, SIMULATOR_TLS_KEY_FILE and SIMULATOR_TLS_CA_FILE go together (mutual TLS)')
  const read = (name: string, path: string): string => {
    try {
      return readFileSync(path, 'utf8')
    } catch (err) {
      return fail(`${name}: cannot read file (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
    }
  }
  https = {
    cert: read('SIMULATOR_TLS_CERT_FILE', tlsFiles.cert as string),
    key: read('SIMULATOR_TLS_KEY_FILE', tlsFiles.key as string),
    ca: read('SIMULATOR_TLS_CA_FILE', tlsFiles.ca as string)
  }
}

const redirectUrl = env.CYBS_REDIRECT_URL === '' ? undefined : env.CYBS_REDIRECT_URL
const { app } = buildSimulator({
  clientId: env.CYBS_CLIENT_ID ?? 'demo-client-id',
  clientSecret: env.CYBS_CLIENT_SECRET ?? 'demo-client-secret',
  redirectUrl,
  https
})

try {
  await app.listen({ host, port })
} catch (err) {
  fail(`cannot listen on ${host}:${port} (${(err as NodeJS.ErrnoException).code ?? String(err)})`)
}

const { port: actualPort } = app.server.address() as { port: number }
const shownHost = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host
const base = `${https === undefined ? 'http' : 'https'}://${shownHost}:${actualPort}`
console.log(`CyberSource simulator: authorize ${base}${AUTHORIZE_PATH}, token ${base}${TOKEN_PATH}${https === undefined ? '' : ' (mutual TLS)'}`)

let closing = false
const shutdown = (): void => {
  if (closing) return
  closing = true
  app.close().then(() => process.exit(0), () => process.exit(1))
}
process.once('SIGINT', shutdown)
process.once('SIGTERM', shutdown)
