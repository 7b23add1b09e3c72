// `npm run bench` and `npm run bench:instructions` (BENCH_MODE=instructions): how close the
// access-token lookup comes to a static route of the same size, timed or counted in
// instructions. Reads the settings, sets up the servers (bench/targets.ts), loads them
// (bench/load.ts), and writes bench/RESULTS.md (bench/report.ts), which it also prints.
// bench/README.md describes the method and the knobs.
import { mkdirSync } from 'node:fs'
import { loadavg } from 'node:os'
import { missingCallgrindTools } from './callgrind.js'
import { createChildren } from './children.js'
import { failLine, runGuarded } from './guard.js'
import { createLoader } from './load.js'
import { renderInstructions, renderSkipped, renderTimed, writeResults } from './report.js'
import { BenchError, OUT, readSettings, type Settings } from './settings.js'
import { checkAudits, setUp } from './targets.js'

let settings: Settings
try {
  settings = readSettings()
} catch (err) {
  process.stderr.write(failLine('bench', err))
  process.exit(1)
}

if (settings.instructions) {
  const missing = missingCallgrindTools()
  if (missing.length > 0) {
    writeResults(settings, renderSkipped(missing))
    process.stderr.write(`bench: instruction counts skipped: ${missing.join(', ')} not found (valgrind is not installed; apt-get install -y valgrind)\n`)
    process.exit(0)
  }
}

const children = createChildren(settings)
const loader = createLoader(settings, children)
/** What the set-up opened besides the servers under test, closed after them, last first. */
const closers: Array<() => Promise<unknown>> = []

async function main (): Promise<void> {
  mkdirSync(OUT, { recursive: true })
  const loadBefore = loadavg()[0]
  const bed = await setUp(settings, children, close => closers.push(close))
  const loaded = settings.only === undefined ? bed.targets : bed.targets.filter(t => settings.only?.includes(t.name))
  if (loaded.length === 0) throw new BenchError(`BENCH_ONLY: none of ${bed.targets.map(t => t.name).join(', ')}`)
  const m = await loader.measure(loaded, bed.authorization)
  const audit = await checkAudits(settings, children, bed.targets)
  const report = settings.instructions
    ? renderInstructions(settings, loaded, m, bed.bodyBytes)
    : renderTimed(settings, { targets: loaded, samples: m.samples, answers: bed.answers, bodyBytes: bed.bodyBytes, tokenBytes: bed.tokenBytes, audit, load: [loadBefore, loadavg()[0]] })
  writeResults(settings, report)
  process.stdout.write(report)
}

async function cleanup (): Promise<void> {
  loader.stop()
  await children.stopAll()
  for (const close of closers.reverse()) await close().catch(() => {})
}

await runGuarded(main, { name: 'bench', deadlineMs: settings.deadlineMs, cleanupMs: settings.stopGraceMs * 3, died: children.died, cleanup })
