// `npm run bench:scale` keeps working: a run with 200 merchants (its figures mean nothing here and
// no goal is asserted) seeds a standalone Redis and a 3-master Cluster, measures both, and writes
// its section into the results file between its markers, replacing the section of an earlier run
// and keeping the rest of the file. The benchmark itself is run by hand (bench/RESULTS.md).
import t from 'tap'
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { ROOT, benchEntry } from '../helpers/bench-build.js'
import { join } from 'node:path'

t.setTimeout(120_000)

t.test('a tiny scale run writes its section and keeps the rest of the file', async t => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-scale-smoke-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const results = join(dir, 'RESULTS.md')
  const before = '# Benchmark: access-token lookup\n\nthe timed report\n\n'
  const after = '# Kept by hand\n\nnotes\n'
  writeFileSync(results, `${before}<!-- scale:start -->\n## Scale (npm run bench:scale)\n\nan earlier run\n<!-- scale:end -->\n${after}`)

  const child = spawn(process.execPath, [benchEntry('scale.js')], {
    cwd: ROOT,
    env: { ...process.env, BENCH_RESULTS: results, BENCH_SCALE_MERCHANTS: '200', BENCH_SCALE_LOAD_SECONDS: '1', BENCH_SCALE_SETTLE_SECONDS: '0' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const code = await new Promise<number | null>(resolve => child.once('exit', resolve))
  t.equal(code, 0, 'the run succeeds', { stderr: stderr.slice(-2000) })

  const report = readFileSync(results, 'utf8')
  t.ok(report.startsWith(before), 'what comes before the section is kept')
  t.ok(report.endsWith(after), 'and what comes after it')
  t.equal(report.split('<!-- scale:start -->').length, 2, 'one section')
  t.notMatch(report, /an earlier run/, 'the earlier run is replaced')
  const section = report.slice(before.length, report.length - after.length)
  t.equal(section, stdout, 'the section is what the run printed')
  t.match(section, /^<!-- scale:start -->\n## Scale \(npm run bench:scale\)\n\nRun \d{4}-\d\d-\d\dT.* on .+ \(\d+ cores, [\d.]+ GiB\), Node v\d+.*, redis-server \d+\.\d+/, 'the date and the machine')
  t.match(section, /200 merchants, each a 1,500-character access-token JWT and a 1,000-character refresh token/, 'the size of the run')
  t.match(section, /^\| \| standalone \| Cluster \(3 masters\) \| goal \|$/m, 'both deployments')
  t.match(section, /^\| \*\*Redis memory per merchant\*\* .* \| [\d,]+ B \| [\d,]+ B \| ≤ 3,400 B: (met|\*\*NOT met\*\*) \/ (met|\*\*NOT met\*\*) \|$/m, 'memory per merchant, against the goal')
  // A cell may hold escaped pipes (Redis 7 names subcommands `cluster|slots`).
  const cell = String.raw`(?:[^|\\]|\\.)*`
  t.match(section, new RegExp(String.raw`^\| /metrics, first scrape ${cell}: Redis commands ${cell}\| \d[\d,]*${cell} \| \d[\d,]*${cell} \|`, 'm'), 'the commands of a scrape, on both')
  t.match(section, /^\| listing, .* \| 1 pages, 200 items, 200 distinct \| 1 pages, 200 items, 200 distinct \|/m, 'every merchant listed, on both')
  t.match(section, /^\| \*\*listing: bytes read from Redis per merchant\*\* .* \| [\d,]+ B \| [\d,]+ B \| ≤ 1,200 B: /m, 'listing bytes, against the goal')
  t.match(section, /^\| \*\*service RSS after 200 distinct lookups\*\* \| [\d.,]+ MiB \| [\d.,]+ MiB \|$/m, 'RSS with and without the cache')
  t.match(section, /^\| cybs_token_cache_entries after \| 200 \| 0 \|$/m, 'the default cache holds every merchant; none with 0')
  t.match(section, /^\*\*Cold \/ cached lookups: \d+\.\d\d\*\*/m, 'the cold / cached ratio')
  t.match(section, /^- standalone: (memory goal met|\*\*memory goal NOT met\*\*)/m, 'a plain verdict per goal')
  t.ok(section.endsWith('<!-- scale:end -->\n'), 'the end marker closes it')
})
