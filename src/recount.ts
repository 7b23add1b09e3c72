// `npm run recount [-- --dry-run] [-- --from-slot <n>]`: rebuilds the merchant counters behind the
// cybs_merchants gauge from the records (src/recount-merchants.ts), with the service's own
// configuration, while the service runs (docs/operations.md#redis-sizing). Progress on stderr,
// the summary on stdout; it prints counts only, never a merchant id or a token.
// Exit status: 0 done; 1 configuration, usage or Redis problem; 130 interrupted (on Cluster it
// prints the slot to resume from).
import { parseArgs } from 'node:util'
import { cliOutput, type CliOutput } from './cli-output.js'
import { loadConfigOrExit } from './config.js'
import { createRedisClient, waitReady } from './redis-client.js'
import { createRedisKeys } from './redis-keys.js'
import { SLOTS } from './merchant-counts.js'
import { recountMerchants, type RecountSummary } from './recount-merchants.js'

const USAGE = `usage: npm run recount [-- [--dry-run] [--from-slot <n>]]
  --dry-run          compare the counters with the records; write nothing
  --from-slot <n>    Redis Cluster: resume at this slot (an interrupted run prints it)`

const cli = cliOutput('recount', USAGE)
const { err, out } = cli
// Annotated, so that TypeScript knows it does not return.
const usageError: CliOutput['usageError'] = cli.usageError

let args
try {
  args = parseArgs({ options: { 'dry-run': { type: 'boolean', default: false }, 'from-slot': { type: 'string' }, help: { type: 'boolean', short: 'h', default: false } }, strict: true }).values
} catch (e) {
  usageError((e as Error).message)
}
if (args.help) {
  out(USAGE)
  process.exit(0)
}
const fromSlot = args['from-slot'] === undefined ? undefined : Number(args['from-slot'])
if (fromSlot !== undefined && !(Number.isInteger(fromSlot) && fromSlot >= 0 && fromSlot < SLOTS)) usageError(`--from-slot: expected an integer from 0 to ${SLOTS - 1}`)
const dryRun = args['dry-run']

const config = loadConfigOrExit(process.env)
const redis = createRedisClient(config.redis)
redis.on('error', () => {}) // reported below
const stop = new AbortController()
const onSignal = (): void => {
  if (stop.signal.aborted) process.exit(130)
  err('stopping after the batch under way (again to quit at once)')
  stop.abort()
}
process.on('SIGINT', onSignal)
process.on('SIGTERM', onSignal)

function printSummary (s: RecountSummary): number {
  const row = (label: string, n: number | string): void => out(`  ${label.padEnd(34)} ${n}`)
  out(dryRun ? 'recount summary (dry run: nothing written)' : 'recount summary')
  row('connected: counters / records', `${s.before.connected} / ${s.counted.connected}`)
  row('reauthorization_required: idem', `${s.before.reauthorization_required} / ${s.counted.reauthorization_required}`)
  row(dryRun ? 'counters keys to correct' : 'counters keys corrected', s.corrected)
  if (!s.complete) {
    out(s.nextSlot === undefined ? 'interrupted before the end: nothing was written; run it again' : `interrupted; resume with: npm run recount -- --from-slot ${s.nextSlot}`)
    return 130
  }
  return 0
}

async function main (): Promise<number> {
  if (!await waitReady(redis, 10_000)) {
    err('Redis is not reachable')
    return 1
  }
  let last = 0
  try {
    const summary = await recountMerchants(redis, createRedisKeys(config.redisKeyPrefix), {
      fromSlot,
      dryRun,
      signal: stop.signal,
      onProgress: p => {
        if (Date.now() - last < 5000) return
        last = Date.now()
        err(`${p.merchants} record(s) read${p.slot === undefined ? '' : `, slots done up to ${p.slot}`}`)
      }
    })
    return printSummary(summary)
  } catch (e) {
    err(`stopped by an error (${(e as Error).name}); counters already corrected stay correct: run it again`)
    return 1
  }
}

try {
  process.exitCode = await main()
} finally {
  redis.disconnect()
}
