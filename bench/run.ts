// `npm run bench` (issue 4): how close the access-token lookup comes to a static route of the same
// size. One process tree: a private redis-server, the simulator in this process, the broker
// (`node dist/src/server.js`, production logging) and the baselines of bench/baselines.ts as child
// processes on loopback ports; autocannon loads them from here, interleaved, for a few rounds.
// Writes bench/RESULTS.md and prints the same.
//
// Knobs (environment): BENCH_CONNECTIONS (50), BENCH_DURATION (10 s), BENCH_WARMUP (3 s),
// BENCH_ROUNDS (3), BENCH_NAIVE=0 (skip the naive path), BENCH_PAD_BYTES (token padding),
// BENCH_ONLY=broker,static (load only these targets), BENCH_KEEP_LOGS=1 (keep bench/out/*.log),
// BENCH_BROKER_NODE_ARGS (e.g. --cpu-prof --cpu-prof-dir=bench/out/prof), and
// BENCH_COMPARE=label=/other/checkout/dist/src/server.js,... (more brokers, e.g. a build from
// before a change, loaded in the same rounds: before/after numbers under the same conditions).
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, createReadStream, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { request as httpRequest } from 'node:http'
import { cpus, loadavg, tmpdir } from 'node:os'
import { isAbsolute, join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import autocannon, { type Instance, type Result } from 'autocannon'
import { buildSimulator, type Simulator } from '../src/simulator/app.js'
import { freePort, waitForPort } from '../src/net-utils.js'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const OUT = join(ROOT, 'bench', 'out')
const RESULTS = join(ROOT, 'bench', 'RESULTS.md')

class BenchError extends Error {}

const int = (name: string, fallback: number, min = 0): number => {
  const v = Number(process.env[name] ?? fallback)
  if (!Number.isInteger(v) || v < min) throw new BenchError(`${name}: must be an integer >= ${min}`)
  return v
}
const list = (name: string): string[] | undefined => process.env[name]?.split(',').map(s => s.trim()).filter(s => s !== '')

function compareBuilds (): Array<{ name: string, script: string }> {
  return (list('BENCH_COMPARE') ?? []).map(item => {
    const sep = item.indexOf('=')
    const name = item.slice(0, sep)
    if (sep < 1 || !/^[a-z0-9_-]{1,16}$/.test(name)) throw new BenchError('BENCH_COMPARE: entries are label=path/to/dist/src/server.js, labels of 1-16 [a-z0-9_-]')
    const path = item.slice(sep + 1)
    return { name, script: isAbsolute(path) ? path : resolve(path) }
  })
}

const settings = {
  connections: int('BENCH_CONNECTIONS', 50, 1),
  pipelining: 1,
  durationS: int('BENCH_DURATION', 10, 1),
  warmupS: int('BENCH_WARMUP', 3),
  rounds: int('BENCH_ROUNDS', 3, 1),
  naive: process.env.BENCH_NAIVE !== '0',
  // Padding claim of the simulator's JWTs: ~1.5 KB access tokens.
  padBytes: int('BENCH_PAD_BYTES', 560),
  keepLogs: process.env.BENCH_KEEP_LOGS === '1',
  only: list('BENCH_ONLY'),
  brokerNodeArgs: list('BENCH_BROKER_NODE_ARGS')?.flatMap(a => a.split(' ')).filter(a => a !== '') ?? [],
  compare: compareBuilds()
}
const TARGET_COUNT = 4 + settings.compare.length
/** The whole run, start-up and shutdown included; past it the run fails and cleans up. */
const DEADLINE_MS = 120_000 + settings.rounds * TARGET_COUNT * (settings.durationS + settings.warmupS + 5) * 1000
const STOP_GRACE_MS = 5000

const MERCHANT = 'bench_merchant'
const LOOKUP_PATH = `/internal/v1/merchants/${MERCHANT}/access-token`

// --- Children ------------------------------------------------------------------------------

interface Child { name: string, proc: ChildProcess, exited: Promise<void>, stderrFile: string, stopping: boolean }

const children: Child[] = []
let stopping = false
let failChild: (err: Error) => void = () => {}
/** Rejects when a child dies while the benchmark still needs it. */
const childDied = new Promise<never>((_resolve, reject) => { failChild = reject })
childDied.catch(() => {})

function spawnChild (name: string, command: string, args: string[], env: NodeJS.ProcessEnv, stdoutFile?: string): Child {
  const stderrFile = join(OUT, `${name}.stderr.log`)
  const errFd = openSync(stderrFile, 'w')
  const outFd = stdoutFile === undefined ? 'ignore' : openSync(stdoutFile, 'w')
  const proc = spawn(command, args, { env, stdio: ['ignore', outFd, errFd], cwd: ROOT })
  closeSync(errFd)
  if (typeof outFd === 'number') closeSync(outFd)
  const exited = new Promise<void>(resolve => proc.once('exit', () => resolve()))
  const child: Child = { name, proc, exited, stderrFile, stopping: false }
  proc.once('error', err => failChild(new BenchError(`${name}: cannot start ${command}: ${err.message}`)))
  proc.once('exit', (code, signal) => {
    if (!stopping && !child.stopping) failChild(new BenchError(`${name} exited during the benchmark (${signal ?? `status ${String(code)}`}); see ${stderrFile}`))
  })
  children.push(child)
  return child
}

const alive = (c: Child): boolean => c.proc.exitCode === null && c.proc.signalCode === null

/** SIGTERM, then SIGKILL after STOP_GRACE_MS. */
async function stopChild (c: Child): Promise<void> {
  c.stopping = true
  if (!alive(c)) return
  c.proc.kill('SIGTERM')
  const timer = setTimeout(() => { if (alive(c)) c.proc.kill('SIGKILL') }, STOP_GRACE_MS)
  await c.exited
  clearTimeout(timer)
}

// Last resort (an exception past the cleanup, process.exit): nothing outlives the runner.
process.once('exit', () => { for (const c of children) if (alive(c)) c.proc.kill('SIGKILL') })

async function startChild (name: string, command: string, args: string[], port: number, env: NodeJS.ProcessEnv, stdoutFile?: string): Promise<Child> {
  const child = spawnChild(name, command, args, env, stdoutFile)
  await Promise.race([waitForPort(port, true, { timeoutMs: 15_000 }), childDied])
  return child
}

const CLOCK_TICKS = 100 // USER_HZ, the unit of the times in /proc/<pid>/stat

/** CPU time (user + system, ms, all threads) a child has used so far; NaN without /proc. */
function cpuMs (c: Child): number {
  try {
    // The fields after the command name, which is in parentheses and may hold spaces.
    const stat = readFileSync(`/proc/${c.proc.pid ?? 0}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) * 1000 / CLOCK_TICKS
  } catch {
    return NaN
  }
}

// --- HTTP ----------------------------------------------------------------------------------

interface Answer { status: number, headers: Record<string, string | string[] | undefined>, headerBytes: number, body: string }

async function get (url: string, headers: Record<string, string> = {}): Promise<Answer> {
  return await new Promise((resolve, reject) => {
    const req = httpRequest(url, { headers, timeout: 10_000 }, res => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        // Size of the header block as sent: "name: value\r\n" per header.
        let headerBytes = 0
        for (let i = 0; i < res.rawHeaders.length; i += 2) headerBytes += res.rawHeaders[i].length + res.rawHeaders[i + 1].length + 4
        resolve({ status: res.statusCode ?? 0, headers: res.headers, headerBytes, body: Buffer.concat(chunks).toString('utf8') })
      })
      res.on('error', reject)
    })
    req.on('timeout', () => req.destroy(new BenchError(`GET ${url}: timed out`)))
    req.on('error', reject)
    req.end()
  })
}

// --- Load ----------------------------------------------------------------------------------

interface Target { name: string, label: string, url: string, child: Child, logFile?: string }
interface Sample { rps: number, p50: number, p99: number, cpuUs: number }

let running: Instance | undefined

async function load (target: Target, durationS: number, authorization: string): Promise<Result> {
  const instance = autocannon({
    url: target.url,
    connections: settings.connections,
    pipelining: settings.pipelining,
    duration: durationS,
    headers: { authorization }
  })
  running = instance
  try {
    const result = await Promise.race([instance, childDied])
    const bad = result.errors + result.timeouts + result.non2xx
    if (bad > 0) throw new BenchError(`${target.name}: ${result.errors} errors, ${result.timeouts} timeouts, ${result.non2xx} non-2xx answers`)
    return result
  } finally {
    running = undefined
  }
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length === 0 ? NaN : s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2
}

/** Lines of a broker log with this message. */
async function countLines (file: string, msg: string): Promise<number> {
  let n = 0
  const needle = `"msg":"${msg}"`
  for await (const line of createInterface({ input: createReadStream(file), crlfDelay: Infinity })) if (line.includes(needle)) n++
  return n
}

// --- Main ----------------------------------------------------------------------------------

let sim: Simulator | undefined
let redisDir: string | undefined

async function main (): Promise<void> {
  mkdirSync(OUT, { recursive: true })
  const loadBefore = loadavg()[0]

  const ports = await Promise.all(Array.from({ length: 6 + settings.compare.length }, async () => await freePort()))
  if (new Set(ports).size !== ports.length) throw new BenchError('could not get distinct free ports; run again')
  const [redisPort, simPort, brokerPort, staticPort, helloPort, naivePort, ...comparePorts] = ports
  const redisUrl = `redis://127.0.0.1:${redisPort}`
  const brokerBase = `http://127.0.0.1:${brokerPort}`

  // A private Redis: no persistence, nothing shared with a Redis the machine may run.
  redisDir = mkdtempSync(join(tmpdir(), 'cybs-bench-redis-'))
  await startChild('redis', 'redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', redisDir], redisPort, { PATH: process.env.PATH })

  const clientId = 'bench-partner'
  const clientSecret = `cs-${randomBytes(24).toString('base64url')}`
  sim = buildSimulator({
    clientId,
    clientSecret,
    redirectUrl: `${brokerBase}/oauth/callback`,
    tokenPadBytes: settings.padBytes,
    // No refresh falls inside the run (one is due after about 2/3 of the lifetime).
    accessTokenTtlSeconds: 3600,
    adminApi: false
  })
  await sim.app.listen({ host: '127.0.0.1', port: simPort })

  const apiSecret = randomBytes(32).toString('base64url')
  const authorization = `Bearer ${apiSecret}`
  const secrets = {
    TOKEN_ENCRYPTION_KEYS: `bench:${randomBytes(32).toString('base64')}`,
    INTERNAL_API_KEYS: `bench:${apiSecret}`
  }
  const brokerEnv = (port: number): NodeJS.ProcessEnv => ({
    PATH: process.env.PATH,
    NODE_ENV: 'production',
    LOG_LEVEL: 'info',
    HOST: '127.0.0.1',
    PORT: String(port),
    PUBLIC_BASE_URL: `http://127.0.0.1:${port}`,
    REDIS_URL: redisUrl,
    CYBS_ENVIRONMENT: 'simulator',
    CYBS_AUTHORIZE_URL: `http://127.0.0.1:${simPort}/ebc2/oauth/authorize`,
    CYBS_TOKEN_URL: `http://127.0.0.1:${simPort}/oauth2/v3/token`,
    CYBS_CLIENT_ID: clientId,
    CYBS_CLIENT_SECRET: clientSecret,
    ...secrets
  })
  const node = process.execPath
  const brokerLog = join(OUT, 'broker.log')
  const broker = await startChild('broker', node, [...settings.brokerNodeArgs, join(ROOT, 'dist', 'src', 'server.js')], brokerPort, brokerEnv(brokerPort), brokerLog)

  // Onboard one merchant the way a browser does: connect → (consent) → callback.
  const connect = await get(`${brokerBase}/oauth/connect`)
  const location = connect.headers.location
  if (connect.status !== 302 || typeof location !== 'string') throw new BenchError(`GET /oauth/connect answered ${connect.status}`)
  const state = new URL(location).searchParams.get('state')
  if (state === null) throw new BenchError('the authorize URL carries no state')
  const code = sim.control.issueCode(MERCHANT)
  const callback = await get(`${brokerBase}/oauth/callback?code=${encodeURIComponent(code)}&state=${encodeURIComponent(state)}`)
  if (callback.status !== 200) throw new BenchError(`GET /oauth/callback answered ${callback.status}`)

  const lookup = await get(`${brokerBase}${LOOKUP_PATH}`, { authorization })
  const token = lookup.status === 200 ? (JSON.parse(lookup.body) as { access_token?: unknown }).access_token : undefined
  if (typeof token !== 'string' || token.length < 100) throw new BenchError(`the lookup answered ${lookup.status} without a token`)

  // The static body is the real lookup response: the same bytes.
  const baselineEnv = { PATH: process.env.PATH, NODE_ENV: 'production' }
  const baselines = join(ROOT, 'dist', 'bench', 'baselines.js')
  const staticChild = await startChild('static', node, [baselines, 'static', String(staticPort)], staticPort, { ...baselineEnv, BENCH_STATIC_BODY: lookup.body })
  const helloChild = await startChild('hello', node, [baselines, 'hello', String(helloPort)], helloPort, baselineEnv)
  const url = (port: number): string => `http://127.0.0.1:${port}${LOOKUP_PATH}`

  const targets: Target[] = [
    { name: 'broker', label: 'broker lookup: cached token, production logging', url: url(brokerPort), child: broker, logFile: brokerLog },
    { name: 'static', label: 'baseline A: bare Fastify, static body of the same size', url: url(staticPort), child: staticChild },
    { name: 'hello', label: 'baseline B: Fastify hello world', url: url(helloPort), child: helloChild }
  ]
  if (settings.naive) {
    const naive = await startChild('naive', node, [baselines, 'naive', String(naivePort)], naivePort, { ...baselineEnv, REDIS_URL: redisUrl, ...secrets })
    targets.push({ name: 'naive', label: 'naive path: Redis HGETALL + AES-GCM decryption + 2 log lines per call', url: url(naivePort), child: naive })
  }
  for (const [i, build] of settings.compare.entries()) {
    const port = comparePorts[i]
    const logFile = join(OUT, `${build.name}.log`)
    const child = await startChild(build.name, node, [...settings.brokerNodeArgs, build.script], port, brokerEnv(port), logFile)
    targets.push({ name: build.name, label: `broker built from ${build.script}`, url: url(port), child, logFile })
  }

  const answers = new Map<string, Answer>()
  for (const t of targets) {
    const a = await get(t.url, { authorization })
    if (a.status !== 200) throw new BenchError(`${t.name}: answered ${a.status}`)
    answers.set(t.name, a)
  }
  if (answers.get('static')?.body !== lookup.body) throw new BenchError('the static route does not answer the lookup response')

  const loaded = settings.only === undefined ? targets : targets.filter(t => settings.only?.includes(t.name))
  if (loaded.length === 0) throw new BenchError(`BENCH_ONLY: none of ${targets.map(t => t.name).join(', ')}`)
  const samples = new Map<string, Sample[]>(loaded.map(t => [t.name, []]))
  /** Lookups each broker answered: set-up requests plus every load's 2xx. */
  const served = new Map<string, number>(targets.map(t => [t.name, t.name === 'broker' ? 2 : 1]))
  for (let round = 0; round < settings.rounds; round++) {
    // Rotated order, so that no target always runs first or after the same neighbour.
    const order = loaded.map((_, i) => loaded[(i + round) % loaded.length])
    for (const t of order) {
      if (settings.warmupS > 0) served.set(t.name, (served.get(t.name) ?? 0) + (await load(t, settings.warmupS, authorization))['2xx'])
      const cpuBefore = cpuMs(t.child)
      const r = await load(t, settings.durationS, authorization)
      served.set(t.name, (served.get(t.name) ?? 0) + r['2xx'])
      const s: Sample = { rps: r.requests.average, p50: r.latency.p50, p99: r.latency.p99, cpuUs: (cpuMs(t.child) - cpuBefore) * 1000 / r['2xx'] }
      samples.get(t.name)?.push(s)
      process.stderr.write(`round ${round + 1}/${settings.rounds}  ${t.name.padEnd(8)} ${s.rps.toFixed(0).padStart(7)} req/s  p50 ${s.p50} ms  p99 ${s.p99} ms  server CPU ${s.cpuUs.toFixed(1)} µs/req\n`)
    }
  }

  // Every lookup wrote its audit line (a request still in flight when a load ended was answered
  // and logged but not counted by autocannon, hence "at least").
  const audit: string[] = []
  for (const t of targets) {
    if (t.logFile === undefined) continue
    await stopChild(t.child)
    const lines = await countLines(t.logFile, 'internal api call')
    if (!settings.keepLogs) rmSync(t.logFile, { force: true })
    const expected = served.get(t.name) ?? 0
    if (lines < expected) throw new BenchError(`${t.name} wrote ${lines} audit lines for ${expected} lookups`)
    audit.push(`${t.name} ${lines} for ${expected}`)
  }

  const report = render({ targets: loaded, samples, answers, bodyBytes: Buffer.byteLength(lookup.body), tokenBytes: Buffer.byteLength(token), audit, load: [loadBefore, loadavg()[0]] })
  writeFileSync(RESULTS, report)
  process.stdout.write(report)
}

// --- Report --------------------------------------------------------------------------------

interface ReportInput {
  targets: Target[]
  samples: Map<string, Sample[]>
  answers: Map<string, Answer>
  bodyBytes: number
  tokenBytes: number
  audit: string[]
  load: [number, number]
}

function render (r: ReportInput): string {
  const med = (name: string, k: keyof Sample): number => median((r.samples.get(name) ?? []).map(s => s[k]))
  const ratio = (a: string, b: string): number => med(a, 'rps') / med(b, 'rps')
  const num = (n: number, digits = 0): string => Number.isNaN(n) ? 'n/a' : n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits })
  const cpu = cpus()
  const vsStatic = ratio('broker', 'static')
  const rows = r.targets.map(t => {
    const s = r.samples.get(t.name) ?? []
    const a = r.answers.get(t.name)
    const bytes = a === undefined ? '' : `${a.headerBytes} + ${Buffer.byteLength(a.body)}`
    return `| ${t.name} | ${t.label} | ${num(med(t.name, 'rps'))} | ${num(med(t.name, 'p50'))} | ${num(med(t.name, 'p99'))} | ${num(med(t.name, 'cpuUs'), 1)} | ${bytes} | ${s.map(x => num(x.rps)).join(' / ')} | ${s.map(x => num(x.p99)).join(' / ')} |`
  })
  const ratios = [
    `| broker / static same size | ${num(vsStatic, 2)} | ${num(med('static', 'cpuUs') / med('broker', 'cpuUs'), 2)} | >= 0.85 (req/s): ${Number.isNaN(vsStatic) ? 'n/a' : vsStatic >= 0.85 ? 'met' : 'NOT met'} |`,
    `| broker / hello world | ${num(ratio('broker', 'hello'), 2)} | ${num(med('hello', 'cpuUs') / med('broker', 'cpuUs'), 2)} | |`,
    ...(r.samples.has('naive') ? [`| broker / naive path (what the cache buys) | ${num(ratio('broker', 'naive'), 2)} | ${num(med('naive', 'cpuUs') / med('broker', 'cpuUs'), 2)} | |`] : []),
    ...settings.compare.filter(b => r.samples.has(b.name)).map(b => `| broker / ${b.name} | ${num(ratio('broker', b.name), 2)} | ${num(med(b.name, 'cpuUs') / med('broker', 'cpuUs'), 2)} | |`)
  ]
  return [
    '# Benchmark: access-token lookup',
    '',
    'Written by `npm run bench` (bench/run.ts): the numbers of the last run, on the machine below.',
    '',
    `- date: ${new Date().toISOString()}`,
    `- node: ${process.version} (${process.platform}/${process.arch})`,
    `- machine: ${cpu.length} cores (${cpu[0]?.model.trim() ?? 'unknown'}); load average ${num(r.load[0], 1)} before, ${num(r.load[1], 1)} after the run. autocannon runs on the same machine and shares the cores with the server under test`,
    `- load: autocannon, ${settings.connections} connections, pipelining ${settings.pipelining}, ${settings.warmupS} s warm-up + ${settings.durationS} s measured per target and round, ${settings.rounds} rounds, targets interleaved in rotated order; medians over the rounds`,
    '- broker: `node dist/src/server.js`, NODE_ENV=production, LOG_LEVEL=info (JSON lines to a file), a private redis-server, the CyberSource simulator; one onboarded merchant, its token served from the in-memory cache',
    `- response: access token ${r.tokenBytes} bytes, lookup body ${r.bodyBytes} bytes; audit lines written: ${r.audit.join(', ')} (one per lookup)`,
    '',
    '| target | what | median req/s | median p50 ms | median p99 ms | server CPU µs/req | header + body bytes | req/s per round | p99 ms per round |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |',
    ...rows,
    '',
    '| ratio | req/s | CPU per request (inverse) | goal |',
    '| --- | ---: | ---: | --- |',
    ...ratios,
    '',
    '## How to read',
    '',
    '- The static route is the ceiling of a lookup on this machine: Fastify answering the same',
    '  bytes, pre-serialized, with no guard, no logging and no hooks. broker / static is what the',
    '  broker\'s own work per call costs: bearer check, audit log line, correlation-id and nosniff',
    '  headers, response schema serialization. Hello world adds the cost of the response size.',
    '- req/s of a saturated server, loaded from the same 2-core machine: the client takes one core,',
    '  so a cheap server is limited by autocannon (static, hello) and an expensive one by itself.',
    '  The "server CPU µs/req" column (user + system time of the server process over the measured',
    '  window, from /proc) does not depend on that and is the better guide to per-request cost;',
    '  the CPU ratio column is static\'s (or hello\'s) CPU per request over the broker\'s.',
    '- The naive path is the lookup without the in-memory cache: a Redis round trip and two',
    '  decryptions per call, two log lines per request. broker / naive is what the cache buys.',
    '- p99 under saturation is mostly queueing behind the other open connections, not the latency',
    '  of an idle service. Compare runs of the same machine only; a high load average (other work',
    '  on the machine) lowers every number.',
    ''
  ].join('\n')
}

// --- Run, with a bounded cleanup on every path ----------------------------------------------

async function cleanup (): Promise<void> {
  stopping = true
  running?.stop()
  const closing: Array<Promise<unknown>> = children.filter(c => c.name !== 'redis').map(stopChild)
  if (sim !== undefined) closing.push(sim.app.close())
  await Promise.allSettled(closing)
  const redis = children.find(c => c.name === 'redis')
  if (redis !== undefined) await stopChild(redis)
  if (redisDir !== undefined) rmSync(redisDir, { recursive: true, force: true })
}

let interrupt: (err: Error) => void = () => {}
const interrupted = new Promise<never>((_resolve, reject) => { interrupt = reject })
interrupted.catch(() => {})
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => interrupt(new BenchError(`${signal}: stopping`)))
const deadline = setTimeout(() => interrupt(new BenchError(`the run took longer than ${DEADLINE_MS / 1000} s`)), DEADLINE_MS)

let status = 0
try {
  await Promise.race([main(), childDied, interrupted])
} catch (err) {
  status = 1
  process.stderr.write(`bench: ${err instanceof BenchError ? err.message : (err as Error).stack ?? String(err)}\n`)
} finally {
  clearTimeout(deadline)
  const forced = setTimeout(() => {
    process.stderr.write('bench: cleanup timed out; killing what is left\n')
    process.exit(1)
  }, STOP_GRACE_MS * 3)
  await cleanup()
  clearTimeout(forced)
}
process.exit(status)
