// `npm run bench:keepalive` and `npm run bench:webhooks` keep working: tiny runs (their figures mean
// nothing here and none is asserted) each write their own subsection of the lifecycle section of
// the results file, appended at its end the first time, and leave the rest of the file, the other
// benchmark's subsection included, as it was. Every webhook must arrive exactly once with a valid
// signature, and every due merchant must be renewed. The benchmarks themselves run by hand.
import t from 'tap'
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ROOT, benchEntry } from '../helpers/bench-build.js'

t.setTimeout(120_000)

async function run (script: string, env: Record<string, string>): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const child = spawn(process.execPath, [benchEntry(script)], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const code = await new Promise<number | null>(resolve => child.once('exit', resolve))
  return { code, stdout, stderr }
}

const between = (text: string, start: string, end: string): string => {
  const from = text.indexOf(start)
  const to = text.indexOf(end, from)
  return from < 0 || to < 0 ? '' : text.slice(from, to + end.length)
}

t.test('tiny keep-alive and webhook runs write their subsections and keep the rest of the file', async t => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-lifecycle-smoke-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const results = join(dir, 'RESULTS.md')
  const before = '# Benchmark: access-token lookup\n\nthe timed report\n\n<!-- scale:start -->\n## Scale\n\nthe scale run\n<!-- scale:end -->\n'
  writeFileSync(results, before)

  const keepalive = await run('keepalive.js', { BENCH_RESULTS: results, KEEPALIVE_MERCHANTS: '500', KEEPALIVE_IDLE_TICKS: '20' })
  t.equal(keepalive.code, 0, 'the keep-alive run succeeds', { stderr: keepalive.stderr.slice(-2000) })
  let report = readFileSync(results, 'utf8')
  t.ok(report.startsWith(before), 'what came before is kept')
  t.ok(report.endsWith('<!-- lifecycle:end -->\n'), 'the lifecycle section is appended at the end')
  t.equal(report.split('<!-- lifecycle:start -->').length, 2, 'one lifecycle section')
  const ka = between(report, '<!-- lifecycle:keepalive:start -->', '<!-- lifecycle:keepalive:end -->')
  t.match(ka, /### Keep-alive schedule \(npm run bench:keepalive\)\n\nRun \d{4}-\d\d-\d\dT.* on .+ \(\d+ cores, [\d.]+ GiB\), Node v\d+.*, redis-server \d+\.\d+.*; load average/, 'the date, the machine and the load')
  t.match(ka, /^\| 500 merchants in the keep-alive schedule \| \|$/m, 'the size of the run')
  t.match(ka, /^\| \*\*idle tick\*\* \(none due\): Redis commands per tick \| \*\*[\d.]+ sent \+ [\d.]+ run inside its script\*\*/m, 'commands per idle tick')
  t.match(ka, /^\| \*\*idle tick\*\*: time per tick, p50 \/ p90 \/ p99 \| \*\*/m, 'time per idle tick')
  t.match(ka, /^\| \*\*1 % due: renewals\/s\*\* .* \| \*\*[\d,]+\*\* \(5 renewed in /m, 'renewals per second')
  t.match(ka, /^\| \*\*Redis commands per renewal\*\* \| \*\*[\d.]+ sent \+ [\d.]+ run inside scripts\*\*/m, 'commands per renewal')
  t.match(ka, /^\| check \| 0 left due afterwards; 10 refreshes at the simulator \(10 expected\) \|$/m, 'every due merchant renewed')
  t.match(ka, /schedule entries only/, 'says what the merchants not due are')
  t.ok(keepalive.stdout.includes(ka.replace(/^<!-- lifecycle:keepalive:start -->\n/, '').replace(/<!-- lifecycle:keepalive:end -->$/, '')), 'and prints it')
  t.match(report, /_Not run yet: `npm run bench:webhooks`\._/, 'the webhook part waits for its run')

  const webhooks = await run('webhooks.js', { BENCH_RESULTS: results, BENCH_WEBHOOK_EVENTS: '60', BENCH_WEBHOOK_SHIPPED_EVENTS: '6', BENCH_WEBHOOK_PACED_EVENTS: '3', BENCH_WEBHOOK_RATE: '6' })
  t.equal(webhooks.code, 0, 'the webhook run succeeds', { stderr: webhooks.stderr.slice(-2000) })
  report = readFileSync(results, 'utf8')
  t.ok(report.startsWith(before), 'what came before is still kept')
  t.equal(between(report, '<!-- lifecycle:keepalive:start -->', '<!-- lifecycle:keepalive:end -->'), ka, 'the keep-alive part is untouched')
  t.notMatch(report, /Not run yet/, 'the placeholder is replaced')
  t.equal(report.split('<!-- lifecycle:webhooks:start -->').length, 2, 'one webhook part')
  const wh = between(report, '<!-- lifecycle:webhooks:start -->', '<!-- lifecycle:webhooks:end -->')
  t.ok(webhooks.stdout.includes('### Webhook deliveries (npm run bench:webhooks)'), 'the part is printed')
  t.match(wh, /Run \d{4}-\d\d-\d\dT.* on .+ \(\d+ cores, [\d.]+ GiB\), Node v\d+.*, redis-server \d+\.\d+.*; load average/, 'the date, the machine and the load')
  const rows = wh.split('\n').filter(l => /^\| (as shipped|poll)/.test(l))
  t.equal(rows.length, 6, 'six runs')
  for (const row of rows) t.match(row, /\| yes \|$/, `exactly once: ${row.split(' | ')[0]}`)
  t.match(wh, /^\| as shipped, 2 replicas, backlog \| 6 \| \*\*[\d,]+\*\* \| [\d,]+ ms \/ [\d,]+ ms \| 6 \(0 retries\) \| [\d.]+ scripts; [\d.]+ in all \| yes \|$/m, 'rate, latency, attempts and commands of a run')
  t.match(wh, /^\| poll 1 ms, 1 replica, backlog, receiver fails 10 %.* \| 60 \| .* \| [\d,]+ \([\d,]+ retries(, [\d,]+ answered 500)?\) \|/m, 'the failing run counts its retries')
  t.match(wh, /\*\*Retry delays shortened\*\*/, 'says the retry delays were shortened')
})
