// `npm run rotate-keys [-- --dry-run] [-- --cursor <c>] [-- --max-pages <n>]`: rewrites every
// merchant record that is not under the first key of TOKEN_ENCRYPTION_KEYS (src/key-rotation.ts),
// with the service's own configuration, while the service runs. Progress on stderr (a bar on a
// terminal), the summary on stdout; it never prints a token or a key, only key ids.
// Exit status: 0 nothing is left under an old key; 1 configuration, usage or Redis problem;
// 2 records are left (listed); 3 stopped by --max-pages; 130 interrupted. 3 and 130 print the
// cursor to resume from.
import { parseArgs } from 'node:util'
import { cliOutput, type CliOutput } from './cli-output.js'
import { ID_PATTERN, loadConfigOrExit } from './config.js'
import { createRedisClient, waitReady } from './redis-client.js'
import { createRedisKeys } from './redis-keys.js'
import { createKeyRing } from './key-ring.js'
import {
  PAGE_SIZE, createKeyRotation, formatCursor, parseCursor,
  type Failure, type Progress, type RotationSummary, type ScanPosition
} from './key-rotation.js'

const USAGE = `usage: npm run rotate-keys [-- [--dry-run] [--cursor <node:cursor>] [--max-pages <n>]]
  --dry-run          count the records under an old key; take no lock, write nothing
  --cursor <c>       resume the first pass where an earlier run stopped (it prints the cursor)
  --max-pages <n>    stop after n pages of ${PAGE_SIZE} keys (prints the cursor to resume from)`

const cli = cliOutput('rotate-keys', USAGE)
const { err, out } = cli
// Annotated, so that TypeScript knows it does not return.
const usageError: CliOutput['usageError'] = cli.usageError

let args
try {
  args = parseArgs({
    options: {
      'dry-run': { type: 'boolean', default: false },
      cursor: { type: 'string' },
      'max-pages': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false }
    },
    strict: true,
    allowPositionals: false
  }).values
} catch (e) {
  usageError((e as Error).message)
}
if (args.help) {
  out(USAGE)
  process.exit(0)
}
let cursor: ScanPosition | undefined
if (args.cursor !== undefined) {
  cursor = parseCursor(args.cursor)
  if (cursor === undefined) usageError('--cursor: expected <node>:<cursor>, as printed by an earlier run')
}
let maxPages: number | undefined
if (args['max-pages'] !== undefined) {
  maxPages = Number(args['max-pages'])
  if (!Number.isInteger(maxPages) || maxPages < 1) usageError('--max-pages: expected a positive integer')
}
const dryRun = args['dry-run']

const config = loadConfigOrExit(process.env)

const kids = config.encryptionKeys.map(k => k.kid)
const targetKid = kids[0]
const redis = createRedisClient(config.redis)
redis.on('error', () => {}) // reported below, as unreachable or per record
const keys = createRedisKeys(config.redisKeyPrefix)
const rotation = createKeyRotation({ redis, keys, keyRing: createKeyRing(config.encryptionKeys), targetKid })

// First Ctrl-C: stop after the page under way (its locks released, its writes done). Second: now;
// any lock left expires by itself, and every write was compare-and-set.
const stop = new AbortController()
let stoppingSince = 0
const onSignal = (): void => {
  if (stop.signal.aborted) {
    // npm forwards the terminal's Ctrl-C to this process, which got it already: one press.
    if (Date.now() - stoppingSince > 1000) process.exit(130)
    return
  }
  stoppingSince = Date.now()
  if (process.stderr.isTTY) process.stderr.write('\n') // off the progress bar's line
  err('stopping after the page under way (again to quit at once)')
  stop.abort()
}
process.on('SIGINT', onSignal)
process.on('SIGTERM', onSignal)

/** A bar on a terminal, redrawn at most ten times a second; plain lines every 5 s otherwise. */
function progressReporter (totals: { first: number, all: number } | undefined): { update: (p: Progress) => void, done: () => void } {
  const tty = process.stderr.isTTY
  let drawnAt = 0
  let lastPhase = ''
  let drawn = false
  const text = (p: Progress): string => `pass ${p.pass}: scanned ${p.scanned}, rotated ${p.rotated}, waiting ${p.pending}, failed ${p.failed}`
  return {
    update (p) {
      const now = Date.now()
      const phaseChanged = `${p.pass}:${p.phase}` !== lastPhase
      lastPhase = `${p.pass}:${p.phase}`
      if (tty) {
        if (!phaseChanged && now - drawnAt < 100) return
        drawnAt = now
        // The first pass may start at a cursor; later ones cover the whole key space.
        const total = p.pass === 1 ? totals?.first : totals?.all
        const share = total === undefined || total === 0 ? 1 : Math.min(1, p.scanned / total)
        const width = 24
        const filled = Math.round(share * width)
        const bar = `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${p.scanned}/${total ?? '?'} ${Math.round(share * 100)}%`
        const wait = p.phase === 'wait' && p.pending > 0 ? `  waiting for ${p.pending} busy` : ''
        process.stderr.write(`\r\x1b[2Kpass ${p.pass} ${bar}  rotated ${p.rotated}  failed ${p.failed}${wait}`)
        drawn = true
        return
      }
      if (p.phase === 'wait') {
        if (phaseChanged) err(`${text(p)}; scan done${p.pending > 0 ? `, waiting for ${p.pending} merchant(s) whose refresh lock is busy` : ''}`)
        return
      }
      if (phaseChanged || now - drawnAt >= 5000) {
        drawnAt = now
        err(`${text(p)}; cursor ${p.cursor === null ? 'end' : formatCursor(p.cursor)}`)
      }
    },
    done () { if (drawn) process.stderr.write('\n') }
  }
}

const REASONS: Record<Failure['reason'], string> = {
  unknown_key_id: 'its key id is not in TOKEN_ENCRYPTION_KEYS',
  undecryptable: 'does not decrypt (another key under that key id, or an altered value)',
  unreadable: 'the record lacks its encrypted fields',
  busy: 'its refresh lock stayed busy',
  conflict: 'kept losing to concurrent writes',
  storage_unavailable: 'Redis did not answer',
  error: 'unexpected error'
}

function printFailures (failed: Failure[]): void {
  const groups = new Map<string, string[]>()
  for (const f of failed) {
    const label = `${REASONS[f.reason]}${f.detail !== undefined && f.detail !== '' ? ` (${f.detail})` : ''}`
    groups.set(label, [...(groups.get(label) ?? []), ID_PATTERN.test(f.merchantId) ? f.merchantId : '(malformed id)'])
  }
  for (const [label, ids] of groups) {
    ids.sort()
    out(`    ${ids.length} ${label}: ${ids.slice(0, 10).join(', ')}${ids.length > 10 ? `, and ${ids.length - 10} more` : ''}`)
  }
}

function printSummary (s: RotationSummary): number {
  const row = (label: string, n: number | string): void => out(`  ${label.padEnd(38)} ${n}`)
  out(dryRun ? 'rotate-keys summary (dry run: nothing written)' : 'rotate-keys summary')
  row('target key id', targetKid)
  row('records scanned (first pass)', s.scanned)
  row('already under the target key', s.current)
  if (dryRun) row('under an old key (would rotate)', s.stale)
  else {
    row('rotated', s.rotated)
    row('busy lock, retried', s.busyRetried)
    row('lost to a concurrent write, checked', s.conflicts)
  }
  row('deleted meanwhile', s.gone)
  row('failed', s.failed.length)
  printFailures(s.failed)
  row('passes', s.passes)
  const resume = s.cursor === null ? 'run it again' : `resume with: npm run rotate-keys -- --cursor ${formatCursor(s.cursor)}`
  if (s.stopped === 'interrupted') {
    out(`interrupted; ${resume}`)
    return 130
  }
  if (s.stopped === 'max_pages') {
    out(`stopped after ${maxPages ?? 0} page(s); ${resume}`)
    return 3
  }
  if (s.stopped === 'storage_unavailable') {
    out(`Redis stopped answering; ${resume}`)
    return 1
  }
  if (s.complete) {
    out(`result: every record is under key id "${targetKid}"`)
    return 0
  }
  if (dryRun) out(`result: ${s.stale} record(s) to rotate${s.failed.length > 0 ? `, ${s.failed.length} that these keys cannot rotate (see above)` : ''}`)
  else if (s.failed.length > 0) out(`result: ${s.failed.length} record(s) are still under an old key (see above); run again once fixed`)
  else out('result: records under an old key keep appearing: does every replica have the new key first? Run again.')
  return 2
}

async function main (): Promise<number> {
  err(`target key id "${targetKid}" (configured: ${kids.join(', ')})${dryRun ? '; dry run' : ''}`)
  if (!await waitReady(redis, 10_000)) {
    err('Redis is not reachable')
    return 1
  }
  let totals: { first: number, all: number } | undefined
  if (process.stderr.isTTY) {
    // The bar's total: a SCAN of key names only (no reads), from where the first pass starts.
    err('counting merchant records…')
    try {
      const first = await rotation.count(cursor)
      totals = { first, all: cursor === undefined ? first : await rotation.count() }
    } catch {} // a bar without a total; the run itself reports what Redis does
  }
  const progress = progressReporter(totals)
  let summary
  try {
    summary = await rotation.run({ cursor, dryRun, maxPages, signal: stop.signal, onProgress: progress.update })
  } catch (e) {
    progress.done()
    if (e instanceof RangeError) err(`--cursor: ${e.message}`)
    else err(`stopped by an unexpected error (${(e as Error).name}); nothing is lost: run it again`)
    return 1
  }
  progress.done()
  return printSummary(summary)
}

try {
  process.exitCode = await main()
} finally {
  redis.disconnect()
}
