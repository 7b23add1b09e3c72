// Standalone CyberSource simulator (`npm run simulator`). A separate development program, so it
// takes its own flags and environment variables (src/simulator/cli.ts), not src/config.ts.
import { readFileSync } from 'node:fs'
import { AUTHORIZE_PATH, TOKEN_PATH, buildSimulator, type SimulatorOptions } from './app.js'
import { SimulatorArgsError, parseSimulatorArgs, simulatorHelp, type SimulatorArgs } from './cli.js'

function fail (message: string): never {
  console.error(`simulator: ${message}`)
  process.exit(1)
}

let args: SimulatorArgs
try {
  args = parseSimulatorArgs(process.argv.slice(2), process.env)
} catch (err) {
  if (!(err instanceof SimulatorArgsError)) throw err
  for (const p of err.problems) console.error(`simulator: ${p}`)
  fail('see --help')
}
if (args.help) {
  process.stdout.write(simulatorHelp())
  process.exit(0)
}
const { host, port, tls } = args

let https: SimulatorOptions['https']
if (tls !== undefined) {
  const read = (what: string, path: string): string => {
    try {
      return readFileSync(path, 'utf8')
    } catch (err) {
      return fail(`${what}: cannot read file (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
    }
  }
  https = { cert: read('--tls-cert', tls.cert), key: read('--tls-key', tls.key), ca: read('--tls-ca', tls.ca) }
}

const { app } = buildSimulator({ ...args.options, https })

try {
  await app.listen({ host, port })
} catch (err) {
  fail(`cannot listen on ${host}:${port} (${(err as NodeJS.ErrnoException).code ?? String(err)})`)
}

const { port: actualPort } = app.server.address() as { port: number }
const shownHost = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host
const base = `${https === undefined ? 'http' : 'https'}://${shownHost}:${actualPort}`
console.log(`CyberSource simulator: authorize ${base}${AUTHORIZE_PATH}, token ${base}${TOKEN_PATH}${https === undefined ? '' : ' (mutual TLS)'}`)
if (args.options.behavior !== undefined) console.log(`simulator: token requests get ${JSON.stringify(args.options.behavior)}`)

let closing = false
const shutdown = (): void => {
  if (closing) return
  closing = true
  // close() flushes the state file.
  app.close().then(() => process.exit(0), () => process.exit(1))
}
process.once('SIGINT', shutdown)
process.once('SIGTERM', shutdown)
