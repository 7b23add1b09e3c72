// `npm run bench` keeps working: a two-round run of one second per target (the numbers mean nothing
// here and are not asserted; every round starts fresh servers) must load them all, account for
// every lookup in the audit trails of the three broker processes (set-up, then one per round) and
// write a complete report. So does `npm run bench:instructions` (a few requests under callgrind),
// which adds its section to the same file, and which skips itself, saying so, where valgrind is
// missing. The benchmark itself is run by hand (bench/RESULTS.md).
import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { ROOT, benchEntry } from '../helpers/bench-build.js'
import { join } from 'node:path'
import { missingCallgrindTools } from '../../bench/callgrind.js'

t.setTimeout(240_000)

t.test('a minimal benchmark run writes a full report', async t => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-smoke-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const results = join(dir, 'RESULTS.md')
  const env = {
    ...process.env,
    BENCH_RESULTS: results,
    BENCH_ROUNDS: '2',
    BENCH_DURATION: '1',
    BENCH_WARMUP: '0',
    BENCH_CONNECTIONS: '8',
    BENCH_FIXED_RPS: '500',
    BENCH_PIN: '0'
  }
  const run = async (t: Test, extra: Record<string, string> = {}): Promise<string> => {
    const child = spawn(process.execPath, [benchEntry('run.js')], { cwd: ROOT, env: { ...env, ...extra }, stdio: ['ignore', 'pipe', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
    child.stdout.resume()
    const code = await new Promise<number | null>(resolve => child.once('exit', resolve))
    t.equal(code, 0, 'the run succeeds', { stderr: stderr.slice(-2000) })
    return stderr
  }
  await run(t)

  const report = readFileSync(results, 'utf8')
  for (const target of ['broker', 'static', 'hello', 'naive']) {
    t.match(report, new RegExp(`^\\| ${target} \\| .+ \\| [\\d,]+ \\|`, 'm'), `a row for ${target}`)
  }
  t.match(report, /^\| broker \/ static same size \| \d\.\d\d \| \d\.\d\d \|/m, 'the ratio to the static route')
  const audit = /audit trail checked after the run \(every lookup counted once\): broker (\d+) lookups of (\d+) in (\d+) lines/.exec(report)
  t.ok(audit, 'the audit check ran')
  t.ok(Number(audit?.[1]) >= Number(audit?.[2]) && Number(audit?.[2]) > 0, 'every lookup is in the audit trail')
  t.ok(Number(audit?.[3]) < Number(audit?.[2]), 'as summaries, fewer lines than lookups')
  t.ok(Number(audit?.[3]) >= 3, 'summaries of the three broker processes (set-up, then a fresh one per round)')
  t.match(report, /2 rounds, .*a fresh server process per target and round/, 'the report says how it ran')

  await t.test('without valgrind, the instruction count skips itself and says so', async t => {
    // A PATH without valgrind: the runner is started by its absolute path and needs nothing else.
    const empty = mkdtempSync(join(tmpdir(), 'bench-smoke-path-'))
    t.teardown(() => rmSync(empty, { recursive: true, force: true }))
    const stderr = await run(t, { BENCH_MODE: 'instructions', PATH: empty })
    t.match(stderr, /^bench: instruction counts skipped: valgrind, callgrind_control, callgrind_annotate not found .*\n$/, 'one line says why')
    t.equal(stderr.split('\n').length, 2, 'and only that line')
    const both = readFileSync(results, 'utf8')
    t.ok(both.startsWith(report), 'the timed report is kept as it was')
    t.match(both.slice(report.length), /^<!-- instruction counts: npm run bench:instructions -->\n# Benchmark: instructions per lookup\n\nSkipped: /, 'the report says it was skipped')

    // Notes kept by hand (and the scale benchmark's section) follow their marker: no mode drops them.
    const kept = '<!-- kept: not written by npm run bench -->\n# Notes by hand\n'
    writeFileSync(results, `${both}\n${kept}`)
    await run(t, { BENCH_MODE: 'instructions', PATH: empty })
    t.ok(readFileSync(results, 'utf8').endsWith(kept), 'an instruction count keeps the notes')
  })

  const missing = missingCallgrindTools()
  const skip = missing.length > 0 ? `needs valgrind: ${missing.join(', ')} not found` : false
  await t.test('an instruction count adds its section and keeps the timed report', { skip }, async t => {
    await run(t, { BENCH_MODE: 'instructions', BENCH_ONLY: 'broker,static', BENCH_NAIVE: '0', BENCH_INSTR_WARMUP: '20', BENCH_INSTR_COUNT: '20' })
    const both = readFileSync(results, 'utf8')
    t.ok(both.startsWith(report), 'the timed report is kept as it was')
    const counted = both.slice(report.length)
    t.match(counted, /^<!-- instruction counts: npm run bench:instructions -->\n# Benchmark: instructions per lookup/)
    const int = (s: string): number => Number(s.replaceAll(',', ''))
    for (const target of ['broker', 'static']) {
      const row = new RegExp(`^\\| ${target} \\| .+ \\| ([\\d,]+) \\| ([\\d,]+) / ([\\d,]+) / ([\\d,]+) \\| [\\d,]+ \\| [\\d,]+ \\|$`, 'm').exec(counted)
      t.ok(row, `a count for ${target}, from three windows`)
      const windows = (row?.slice(2) ?? []).map(int).sort((a, b) => a - b)
      t.equal(int(row?.[1] ?? ''), windows[1], `${target}: the median window is its count`)
    }
    t.match(counted, /^\| broker \/ static same size \| \d\.\d\d \|$/m, 'the ratio to the static route')
    await run(t, { BENCH_ROUNDS: '1' })
    const again = readFileSync(results, 'utf8')
    t.ok(again.endsWith(counted), 'a timed run keeps the instruction counts')
    t.match(again, /1 rounds, /)
  })
})
