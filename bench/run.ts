// `npm run bench` (issue 4): how close the access-token lookup comes to a static route of the same
// size. One process tree: a private redis-server, the simulator in this process, the broker
// (`node dist/src/server.js`, production logging) and the baselines of bench/baselines.ts as child
// processes on loopback ports; autocannon loads them from here, interleaved, for a few rounds.
// Writes bench/RESULTS.md and prints the same.
//
// BENCH_MODE=instructions (`npm run bench:instructions`) counts instructions instead: every target
// runs under valgrind's callgrind (bench/callgrind.ts), takes BENCH_INSTR_WARMUP requests (10000)
// uncounted, then BENCH_INSTR_WINDOWS (3) windows of BENCH_INSTR_COUNT (5000) counted, and the
// median window is its count; its section of bench/RESULTS.md gives the instructions per request
// and their ratios. Slow (a few minutes per target), but within about 2 % from run to run on a
// machine whose speed drifts by far more.
//
// Knobs (environment): BENCH_CONNECTIONS (50), BENCH_DURATION (10 s, in turns of BENCH_SLICE: 2 s,
// the broker and the static route alternating), BENCH_WARMUP (3 s),
// BENCH_ROUNDS (5), BENCH_FIXED_RPS (8000: the rate of the fixed-rate CPU measurement, 0 skips it),
// BENCH_PIN=0 (do not pin the servers to core 0 and autocannon to core 1), BENCH_RESULTS (the
// report's path instead of bench/RESULTS.md), BENCH_NAIVE=0 (skip the naive path),
// BENCH_PAD_BYTES (token padding), BENCH_ONLY=broker,static (load only these targets),
// BENCH_KEEP_LOGS=1 (keep bench/out/*.log), BENCH_RESTART=0 (one server process per target for the
// whole run instead of a fresh one per round), BENCH_BROKER_NODE_ARGS (e.g. --cpu-prof --cpu-prof-dir=bench/out/prof), and
// BENCH_COMPARE=label=/other/checkout/dist/src/server.js,... (more brokers, e.g. a build from
// before a change, loaded in the same rounds: before/after numbers under the same conditions).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, createReadStream, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { request as httpRequest } from 'node:http'
import { cpus, loadavg, tmpdir } from 'node:os'
import { isAbsolute, join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import autocannon, { type Instance, type Result } from 'autocannon'
import { callgrindAvailable, dumpCounts, startCounting, underCallgrind, CALLGRIND_ENV, type Counts } from './callgrind.js'
import { buildSimulator, type Simulator } from '../src/simulator/app.js'
import { freePort, waitForPort } from '../src/net-utils.js'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const OUT = join(ROOT, 'bench', 'out')
const RESULTS = process.env.BENCH_RESULTS ?? join(ROOT, 'bench', 'RESULTS.md')

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

const MODES = ['time', 'instructions'] as const
const mode = (process.env.BENCH_MODE ?? 'time') as typeof MODES[number]
if (!MODES.includes(mode)) throw new BenchError(`BENCH_MODE: one of ${MODES.join(', ')}`)
const instructions = mode === 'instructions'

const settings = {
  connections: int('BENCH_CONNECTIONS', 50, 1),
  pipelining: 1,
  durationS: int('BENCH_DURATION', 10, 1),
  sliceS: int('BENCH_SLICE', 2, 1),
  warmupS: int('BENCH_WARMUP', 3),
  rounds: instructions ? 1 : int('BENCH_ROUNDS', 5, 1),
  fixedRps: int('BENCH_FIXED_RPS', 8000),
  naive: process.env.BENCH_NAIVE !== '0',
  // Padding claim of the simulator's JWTs: ~1.5 KB access tokens.
  padBytes: int('BENCH_PAD_BYTES', 560),
  keepLogs: process.env.BENCH_KEEP_LOGS === '1',
  // A fresh server process per target and round: one process's speed depends on its JIT's
  // choices and memory layout (10 % apart between two processes of the same build), which more
  // rounds against the same process do not average out.
  restart: instructions || process.env.BENCH_RESTART !== '0',
  pin: process.env.BENCH_PIN !== '0' && cpus().length >= 2 && spawnSync('taskset', ['-V']).status === 0,
  only: list('BENCH_ONLY'),
  brokerNodeArgs: list('BENCH_BROKER_NODE_ARGS')?.flatMap(a => a.split(' ')).filter(a => a !== '') ?? [],
  compare: compareBuilds(),
  instrWarmup: int('BENCH_INSTR_WARMUP', 10_000),
  instrCount: int('BENCH_INSTR_COUNT', 5000, 1),
  instrWindows: int('BENCH_INSTR_WINDOWS', 3, 1)
}
const TARGET_COUNT = 4 + settings.compare.length
/** Seconds of the fixed-rate measurement per target and round. */
const FIXED_S = Math.min(settings.durationS, 5)
/** Start-up of a server under test (under callgrind: about a minute). */
const START_MS = instructions ? 600_000 : 15_000
/** The whole run, start-up and shutdown included; past it the run fails and cleans up. */
const DEADLINE_MS = instructions
  ? 120_000 + TARGET_COUNT * (2 * START_MS + (settings.instrWarmup + settings.instrCount * settings.instrWindows) * 20)
  : 120_000 + settings.rounds * TARGET_COUNT * (Math.ceil(settings.durationS / settings.sliceS) * (settings.sliceS + 1) + FIXED_S + settings.warmupS + 5) * 1000
const STOP_GRACE_MS = instructions ? 60_000 : 5000

const MERCHANT = 'bench_merchant'
const LOOKUP_ROUTE = '/internal/v1/merchants/:merchantId/access-token'
const LOOKUP_PATH = LOOKUP_ROUTE.replace(':merchantId', MERCHANT)

// --- Children ------------------------------------------------------------------------------

interface Child { name: string, proc: ChildProcess, exited: Promise<void>, stderrFile: string, stopping: boolean }

const children: Child[] = []
let stopping = false
let failChild: (err: Error) => void = () => {}
/** Rejects when a child dies while the benchmark still needs it. */
const childDied = new Promise<never>((_resolve, reject) => { failChild = reject })
childDied.catch(() => {})

// Pinning (settings.pin): every server under test on core 0, autocannon (this process, all its
// threads) on core 1, so that the client and the server never compete for a core and the
// scheduler does not move them between rounds; redis-server is left unpinned.
const SERVER_CORE = '0'
const CLIENT_CORE = '1'

/** Log files opened so far: a restarted server appends to the log of its predecessors. */
const opened = new Set<string>()

/** BENCH_MODE=instructions: the servers under test started from now on run under callgrind. */
let counting = false
const callgrindFile = (name: string): string => join(OUT, `callgrind.${name}.out`)

/** Starts a child process; a server under test (not redis-server) is pinned, and counted when `counting`. */
function spawnChild (name: string, command: string, args: string[], env: NodeJS.ProcessEnv, stdoutFile?: string, underTest = true): Child {
  if (underTest && counting) {
    const out = callgrindFile(name)
    for (const stale of [out, `${out}.1`]) rmSync(stale, { force: true })
    ;[command, args] = underCallgrind(out, command, args)
    env = { ...env, ...CALLGRIND_ENV }
  }
  const stderrFile = join(OUT, `${name}.stderr.log`)
  const errFd = openSync(stderrFile, 'w')
  const outFd = stdoutFile === undefined ? 'ignore' : openSync(stdoutFile, opened.has(stdoutFile) ? 'a' : 'w')
  if (stdoutFile !== undefined) opened.add(stdoutFile)
  // taskset execs the command: the child's pid (and its /proc CPU times) stay the server's.
  const [file, argv] = underTest && settings.pin ? ['taskset', ['-c', SERVER_CORE, command, ...args]] : [command, args]
  const proc = spawn(file, argv, { env, stdio: ['ignore', outFd, errFd], cwd: ROOT })
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
  c.proc.kill('SIGCONT') // one paused (turn) handles its SIGTERM once continued
  const timer = setTimeout(() => { if (alive(c)) c.proc.kill('SIGKILL') }, STOP_GRACE_MS)
  await c.exited
  clearTimeout(timer)
}

// Last resort (an exception past the cleanup, process.exit): nothing outlives the runner.
process.once('exit', () => { for (const c of children) if (alive(c)) c.proc.kill('SIGKILL') })

async function startChild (name: string, command: string, args: string[], port: number, env: NodeJS.ProcessEnv, stdoutFile?: string, underTest?: boolean): Promise<Child> {
  const child = spawnChild(name, command, args, env, stdoutFile, underTest)
  await Promise.race([waitForPort(port, true, { timeoutMs: START_MS }), childDied])
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

interface Target {
  name: string
  label: string
  url: string
  /** The server process now running; `start` replaces it (BENCH_RESTART). */
  child: Child
  start: () => Promise<Child>
  logFile?: string
}
interface Sample {
  rps: number
  p50: number
  p99: number
  cpuUs: number
  /** Server CPU per request at the fixed rate (BENCH_FIXED_RPS), NaN when skipped. */
  cpuAtRateUs: number
}

let running: Instance | undefined

/** Loads a target for `duration` seconds, or until it answered `amount` requests. */
async function load (target: Target, authorization: string, size: { duration: number, overallRate?: number } | { amount: number }): Promise<Result> {
  const instance = autocannon({
    url: target.url,
    connections: settings.connections,
    pipelining: settings.pipelining,
    headers: { authorization },
    // Under callgrind a server is about 50 times slower: autocannon's 10 s would time out.
    ...(instructions ? { timeout: 120 } : {}),
    ...size
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

/** A count's instructions without the optimizing compilers' (a one-off of the warm-up). */
const steadyCount = (c: Counts): number => c.total - c.compiler
/** The median window by steadyCount (of an even number, the lower of the two middle ones). */
const medianWindow = (ws: Counts[]): Counts => [...ws].sort((a, b) => steadyCount(a) - steadyCount(b))[Math.floor((ws.length - 1) / 2)]

/** Lookups in a broker's audit trail: a line per call, or the counts of the summary lines. */
async function auditedLookups (file: string): Promise<{ lookups: number, lines: number }> {
  let lookups = 0
  let lines = 0
  for await (const line of createInterface({ input: createReadStream(file), crlfDelay: Infinity })) {
    if (!line.includes('"msg":"internal api')) continue
    const l = JSON.parse(line) as { msg?: string, route?: string, count?: number }
    if (l.route !== LOOKUP_ROUTE) continue
    if (l.msg === 'internal api call') lookups++
    else if (l.msg === 'internal api lookups') lookups += l.count ?? 0
    else continue
    lines++
  }
  return { lookups, lines }
}

// --- Main ----------------------------------------------------------------------------------

let sim: Simulator | undefined
let redisDir: string | undefined

async function main (): Promise<void> {
  if (instructions && !callgrindAvailable()) throw new BenchError('BENCH_MODE=instructions needs valgrind (apt-get install -y valgrind)')
  mkdirSync(OUT, { recursive: true })
  const loadBefore = loadavg()[0]

  const ports = await Promise.all(Array.from({ length: 6 + settings.compare.length }, async () => await freePort()))
  if (new Set(ports).size !== ports.length) throw new BenchError('could not get distinct free ports; run again')
  const [redisPort, simPort, brokerPort, staticPort, helloPort, naivePort, ...comparePorts] = ports
  const redisUrl = `redis://127.0.0.1:${redisPort}`
  const brokerBase = `http://127.0.0.1:${brokerPort}`

  // A private Redis: no persistence, nothing shared with a Redis the machine may run.
  redisDir = mkdtempSync(join(tmpdir(), 'cybs-bench-redis-'))
  await startChild('redis', 'redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', redisDir], redisPort, { PATH: process.env.PATH }, undefined, false)
  if (settings.pin && spawnSync('taskset', ['-a', '-p', '-c', CLIENT_CORE, String(process.pid)], { stdio: 'ignore' }).status !== 0) {
    throw new BenchError('BENCH_PIN: taskset could not pin the benchmark to core 1 (BENCH_PIN=0 runs unpinned)')
  }

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
  /** Starts a broker build (this one, or one of BENCH_COMPARE) on its port, logging to its file. */
  const brokerStarter = (name: string, script: string, port: number, logFile: string) => async (): Promise<Child> =>
    await startChild(name, node, [...settings.brokerNodeArgs, script], port, brokerEnv(port), logFile)
  const startBroker = brokerStarter('broker', join(ROOT, 'dist', 'src', 'server.js'), brokerPort, brokerLog)
  const broker = await startBroker()

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
  const baseline = (kind: string, port: number, env: NodeJS.ProcessEnv) => async (): Promise<Child> =>
    await startChild(kind, node, [baselines, kind, String(port)], port, { ...baselineEnv, ...env })
  const url = (port: number): string => `http://127.0.0.1:${port}${LOOKUP_PATH}`
  const target = async (t: Omit<Target, 'child'>): Promise<Target> => ({ ...t, child: await t.start() })

  const targets: Target[] = [
    { name: 'broker', label: 'broker lookup: cached token, production logging', url: url(brokerPort), child: broker, start: startBroker, logFile: brokerLog },
    await target({ name: 'static', label: 'baseline A: bare Fastify, static body of the same size', url: url(staticPort), start: baseline('static', staticPort, { BENCH_STATIC_BODY: lookup.body }) }),
    await target({ name: 'hello', label: 'baseline B: Fastify hello world', url: url(helloPort), start: baseline('hello', helloPort, {}) })
  ]
  if (settings.naive) {
    targets.push(await target({ name: 'naive', label: 'naive path: Redis HGETALL + AES-GCM decryption + 2 log lines per call', url: url(naivePort), start: baseline('naive', naivePort, { REDIS_URL: redisUrl, ...secrets }) }))
  }
  for (const [i, build] of settings.compare.entries()) {
    const port = comparePorts[i]
    const logFile = join(OUT, `${build.name}.log`)
    targets.push(await target({ name: build.name, label: `broker built from ${build.script}`, url: url(port), start: brokerStarter(build.name, build.script, port, logFile), logFile }))
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
  // The broker and the static route (and builds to compare) form one unit: started together and
  // loaded in turns of BENCH_SLICE seconds, so that each round's ratio compares loads that
  // alternate within seconds (this machine's speed drifts by up to 2x within a minute); the other
  // targets are units of their own.
  const pairNames = ['broker', 'static', ...settings.compare.map(b => b.name)]
  const pair = loaded.filter(t => pairNames.includes(t.name))
  const units = [...(pair.length >= 2 ? [pair] : pair.map(t => [t])), ...loaded.filter(t => !pairNames.includes(t.name)).map(t => [t])]
  const counts = new Map<string, Counts>()
  const windows = new Map<string, Counts[]>()
  const answered = (t: Target, n: number): void => { served.set(t.name, (served.get(t.name) ?? 0) + n) }

  /**
   * Instructions per request of one target (BENCH_MODE=instructions): warm, then count windows of
   * BENCH_INSTR_COUNT requests and keep the median one. A major garbage collection (marking and
   * sweeping the old generation, every few ten thousand requests) adds about a third to the
   * window it falls into; with one count, whether it fell in decided the result.
   */
  const countInstructions = async (t: Target): Promise<void> => {
    const pid = t.child.proc.pid ?? 0
    const run = async (amount: number): Promise<void> => { answered(t, (await load(t, authorization, { amount }))['2xx']) }
    if (settings.instrWarmup > 0) await run(settings.instrWarmup)
    startCounting(pid)
    const counted: Counts[] = []
    for (let part = 1; part <= settings.instrWindows; part++) {
      await run(settings.instrCount)
      counted.push(dumpCounts(pid, callgrindFile(t.name), part))
    }
    await stopChild(t.child)
    const c = medianWindow(counted)
    counts.set(t.name, c)
    windows.set(t.name, counted)
    process.stderr.write(`${t.name.padEnd(8)} ${perRequest(steadyCount(c)).padStart(9)} instructions per request (windows: ${counted.map(w => perRequest(steadyCount(w))).join(' / ')}), ${perRequest(c.compiler)} more in the optimizing compilers\n`)
  }

  /**
   * Only the target being loaded runs: the others of its unit are paused (SIGSTOP), so that the
   * background work a server leaves behind (garbage collection, compilation, timers) is done in
   * its own turn and not on the core of the one loaded (all servers share core 0). So it is
   * when instructions are counted: a server that shares its core answers fewer requests per
   * event-loop turn.
   */
  const turn = (unit: Target[], t: Target): void => {
    for (const other of unit) if (other !== t) other.child.proc.kill('SIGSTOP')
    t.child.proc.kill('SIGCONT')
  }
  const resume = (unit: Target[]): void => { for (const t of unit) t.child.proc.kill('SIGCONT') }

  /** One round of a unit: warm-up, turns as fast as it goes, then the fixed rate, per target. */
  const timeUnit = async (unit: Target[], round: number): Promise<void> => {
    for (const t of unit) {
      turn(unit, t)
      if (settings.warmupS > 0) answered(t, (await load(t, authorization, { duration: settings.warmupS }))['2xx'])
    }
    const acc = unit.map(t => ({ t, answers: 0, seconds: 0, cpuMs: 0, p50: [] as number[], p99: [] as number[] }))
    const turns = Math.ceil(settings.durationS / settings.sliceS)
    for (let i = 0; i < turns; i++) {
      // A B, B A, A B…: neither goes first more often.
      for (const a of i % 2 === 0 ? acc : [...acc].reverse()) {
        turn(unit, a.t)
        const cpuBefore = cpuMs(a.t.child)
        const r = await load(a.t, authorization, { duration: settings.sliceS })
        a.cpuMs += cpuMs(a.t.child) - cpuBefore
        a.answers += r['2xx']
        a.seconds += r.duration
        a.p50.push(r.latency.p50)
        a.p99.push(r.latency.p99)
        answered(a.t, r['2xx'])
      }
    }
    for (const { t, answers, seconds, cpuMs: busyMs, p50, p99 } of acc) {
      let cpuAtRateUs = NaN
      turn(unit, t)
      if (settings.fixedRps > 0) {
        const cpuBefore = cpuMs(t.child)
        const r = await load(t, authorization, { duration: FIXED_S, overallRate: settings.fixedRps })
        answered(t, r['2xx'])
        cpuAtRateUs = (cpuMs(t.child) - cpuBefore) * 1000 / r['2xx']
      }
      const s: Sample = { rps: answers / seconds, p50: median(p50), p99: median(p99), cpuUs: busyMs * 1000 / answers, cpuAtRateUs }
      samples.get(t.name)?.push(s)
      process.stderr.write(`round ${round + 1}/${settings.rounds}  ${t.name.padEnd(8)} ${s.rps.toFixed(0).padStart(7)} req/s  p50 ${s.p50} ms  p99 ${s.p99} ms  server CPU ${s.cpuUs.toFixed(1)} µs/req, ${s.cpuAtRateUs.toFixed(1)} µs/req at ${settings.fixedRps} req/s\n`)
    }
    resume(unit)
  }

  counting = instructions
  for (let round = 0; round < settings.rounds; round++) {
    // Rotated order, so that no unit always runs first or after the same neighbour; within a
    // unit, the order alternates.
    const order = units.map((_, i) => units[(i + round) % units.length]).map(u => round % 2 === 1 ? [...u].reverse() : u)
    for (const unit of order) {
      // Every round starts fresh processes, the first one too: the processes started (and
      // checked) above were all started at once and served the set-up, and they measured slower
      // in round 1 than in any later round (the static route by about a quarter).
      if (settings.restart) {
        for (const t of unit) {
          await stopChild(t.child)
          t.child = await t.start()
        }
      }
      if (instructions) {
        for (const t of unit) {
          turn(unit, t)
          await countInstructions(t)
        }
        resume(unit)
        continue
      }
      await timeUnit(unit, round)
      if (settings.restart && round < settings.rounds - 1) for (const t of unit) await stopChild(t.child)
    }
  }

  // Every lookup is in the audit trail (a request still in flight when a load ended was answered
  // and audited but not counted by autocannon, hence "at least"). Stopping the broker writes the
  // pending summaries.
  const audit: string[] = []
  for (const t of targets) {
    if (t.logFile === undefined) continue
    await stopChild(t.child)
    const { lookups, lines } = await auditedLookups(t.logFile)
    if (!settings.keepLogs) rmSync(t.logFile, { force: true })
    const expected = served.get(t.name) ?? 0
    if (lookups < expected) throw new BenchError(`${t.name} audited ${lookups} lookups of ${expected}`)
    audit.push(`${t.name} ${lookups} lookups of ${expected} in ${lines} lines`)
  }

  const report = instructions
    ? renderInstructions(loaded, counts, windows, Buffer.byteLength(lookup.body))
    : render({ targets: loaded, samples, answers, bodyBytes: Buffer.byteLength(lookup.body), tokenBytes: Buffer.byteLength(token), audit, load: [loadBefore, loadavg()[0]] })
  writeResults(report)
  process.stdout.write(report)
}

// --- Report --------------------------------------------------------------------------------

const num = (n: number, digits = 0): string => Number.isNaN(n) ? 'n/a' : n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits })
/** Instructions of one window (BENCH_INSTR_COUNT requests) per request. */
const perRequest = (instructions: number): string => num(instructions / settings.instrCount)
const machine = (): string => {
  const cpu = cpus()
  return `${cpu.length} cores (${cpu[0]?.model.trim() ?? 'unknown'})`
}

// bench/RESULTS.md holds both reports: the timed one, then, after this line, the instruction
// counts. Each mode rewrites its own part and keeps the other.
const INSTRUCTIONS_MARKER = '<!-- instruction counts: npm run bench:instructions -->'

/** The broker's ratios, in report order: the other target, and the row's label. */
function comparisons (): Array<[string, string]> {
  return [
    ['static', 'broker / static same size'],
    ['hello', 'broker / hello world'],
    ['naive', 'broker / naive path (what the cache buys)'],
    ...settings.compare.map((b): [string, string] => [b.name, `broker / ${b.name}`])
  ]
}

function writeResults (report: string): void {
  let previous = ''
  try { previous = readFileSync(RESULTS, 'utf8') } catch {}
  const at = previous.indexOf(INSTRUCTIONS_MARKER)
  const [timed, counted] = at < 0 ? [previous, ''] : [previous.slice(0, at), previous.slice(at)]
  writeFileSync(RESULTS, instructions ? `${timed}${INSTRUCTIONS_MARKER}\n${report}` : `${report}${counted}`)
}

function renderInstructions (targets: Target[], counts: Map<string, Counts>, windows: Map<string, Counts[]>, bodyBytes: number): string {
  const n = settings.instrCount
  const steady = (name: string): number => {
    const c = counts.get(name)
    return c === undefined ? NaN : steadyCount(c) / n
  }
  const rows = targets.map(t => {
    const c = counts.get(t.name)
    const each = (windows.get(t.name) ?? []).map(w => perRequest(steadyCount(w))).join(' / ')
    return `| ${t.name} | ${t.label} | ${perRequest(c === undefined ? NaN : steadyCount(c))} | ${each} | ${perRequest(c?.compiler ?? NaN)} | ${perRequest(c?.total ?? NaN)} |`
  })
  /** The other target's count over the broker's: read like a req/s ratio (1 is as cheap). */
  const ratioRow = (other: string, label: string): string => `| ${label} | ${num(steady(other) / steady('broker'), 2)} |`
  const ratios = comparisons().filter(([other]) => counts.has(other) && counts.has('broker')).map(([other, label]) => ratioRow(other, label))
  return [
    '# Benchmark: instructions per lookup',
    '',
    'Written by `npm run bench:instructions` (bench/run.ts, BENCH_MODE=instructions): the counts of the last run.',
    '',
    `- date: ${new Date().toISOString()}`,
    `- node: ${process.version} (${process.platform}/${process.arch}); machine: ${machine()}`,
    `- each target a fresh process under \`valgrind --tool=callgrind\`, with the same set-up as the timed run (broker with production logging, lookup body ${bodyBytes} bytes); autocannon, ${settings.connections} connections: ${num(settings.instrWarmup)} requests uncounted (warm-up), then ${num(settings.instrWindows)} windows of ${num(n)} counted, the median window taken`,
    '',
    '| target | what | instructions per request | per window | more in the optimizing compilers | all counted, per request |',
    '| --- | --- | ---: | --- | ---: | ---: |',
    ...rows,
    '',
    '| ratio (the other target\'s instructions per request over the broker\'s, like a req/s ratio) | instructions |',
    '| --- | ---: |',
    ...ratios,
    '',
    '## How to read',
    '',
    '- Instructions of the server process (every thread) in user space, counted by callgrind. For',
    '  the same build and load they stay within about 2 % from run to run (the JIT\'s choices and',
    '  the garbage collector\'s timing vary), whatever else the machine does, where timings on a',
    '  shared machine drift by far more: a change of a few per cent shows. BENCH_COMPARE puts the',
    '  build from before a change in the same run.',
    '- A major garbage collection (marking and sweeping the old generation, every few ten',
    '  thousand requests) adds about a third to the window it falls into: each target is counted',
    '  in windows and the median window is taken, which one such window does not move. The per',
    '  window column shows them.',
    '- Not counted: the kernel (socket reads and writes, waking the client), which every target',
    '  pays alike, and the cost of cache and branch misses; time is not proportional to',
    '  instructions. The goal of issue 4 is in requests/s: the timed report above.',
    '- The optimizing compilers (TurboFan, Turboshaft, Maglev) still work now and then in a warm',
    '  server; what they did during the counted requests is a one-off of the warm-up, given apart',
    '  and left out of the first column and the ratios.',
    ''
  ].join('\n')
}

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
  /** The same ratio within each round (the broker and the static route took turns), median. */
  const roundRatio = (a: string, b: string): number => {
    const xs = r.samples.get(a) ?? []
    const ys = r.samples.get(b) ?? []
    return median(xs.slice(0, ys.length).map((x, i) => x.rps / ys[i].rps))
  }
  /** b's CPU per request over a's: how many a-requests cost what one b-request costs. */
  const cpuRatio = (a: string, b: string, k: 'cpuUs' | 'cpuAtRateUs'): number => med(b, k) / med(a, k)
  /** How busy a target kept its core while loaded as fast as it goes (1 = saturated), median. */
  const busy = (name: string): number => median((r.samples.get(name) ?? []).map(s => s.rps * s.cpuUs / 1e6))
  // The goal counts as met only when both estimates reach it, and only when the static route
  // saturated its core: otherwise autocannon was the bottleneck, and every ratio is overstated.
  const vsStatic = Math.min(ratio('broker', 'static'), roundRatio('broker', 'static'))
  const goal = Number.isNaN(vsStatic)
    ? 'n/a'
    : vsStatic < 0.85 ? 'NOT met' : busy('static') >= 0.9 ? 'met' : `not measured: the static route kept its core only ${num(100 * busy('static'))} % busy (the client was the bottleneck)`
  const rate = num(settings.fixedRps)
  const rows = r.targets.map(t => {
    const s = r.samples.get(t.name) ?? []
    const a = r.answers.get(t.name)
    const bytes = a === undefined ? '' : `${a.headerBytes} + ${Buffer.byteLength(a.body)}`
    return `| ${t.name} | ${t.label} | ${num(med(t.name, 'rps'))} | ${num(med(t.name, 'p50'))} | ${num(med(t.name, 'p99'))} | ${num(med(t.name, 'cpuUs'), 1)} | ${num(100 * busy(t.name))} % | ${num(med(t.name, 'cpuAtRateUs'), 1)} | ${bytes} | ${s.map(x => num(x.rps)).join(' / ')} | ${s.map(x => num(x.p99)).join(' / ')} |`
  })
  const ratioRow = (label: string, other: string, goal = ''): string =>
    `| ${label} | ${num(ratio('broker', other), 2)} | ${num(roundRatio('broker', other), 2)} | ${num(cpuRatio('broker', other, 'cpuUs'), 2)} | ${num(cpuRatio('broker', other, 'cpuAtRateUs'), 2)} | ${goal} |`
  const ratios = comparisons().filter(([other]) => r.samples.has(other))
    .map(([other, label]) => ratioRow(label, other, other === 'static' ? `>= 0.85 (req/s, both estimates): ${goal}` : ''))
  return [
    '# Benchmark: access-token lookup',
    '',
    'Written by `npm run bench` (bench/run.ts): the numbers of the last run, on the machine below.',
    '',
    `- date: ${new Date().toISOString()}`,
    `- node: ${process.version} (${process.platform}/${process.arch})`,
    `- machine: ${machine()}; load average ${num(r.load[0], 1)} before, ${num(r.load[1], 1)} after the run. autocannon runs on the same machine: ${settings.pin ? `pinned to core ${CLIENT_CORE}, every server under test to core ${SERVER_CORE}` : 'unpinned, sharing the cores with the server under test'}`,
    `- load: autocannon, ${settings.connections} connections, pipelining ${settings.pipelining}; per target and round ${settings.warmupS} s warm-up, ${Math.ceil(settings.durationS / settings.sliceS) * settings.sliceS} s as fast as it goes, then ${settings.fixedRps > 0 ? `${FIXED_S} s at a fixed ${rate} req/s` : 'no fixed-rate part'}; ${settings.rounds} rounds, targets interleaved in rotated order; the broker and the static route${settings.compare.length > 0 ? ' (and the builds compared)' : ''} started together and loaded in turns of ${settings.sliceS} s (A B, B A, …); ${settings.restart ? 'a fresh server process per target and round' : 'one server process per target for the whole run'}; medians over the rounds`,
    '- broker: `node dist/src/server.js`, NODE_ENV=production, LOG_LEVEL=info (JSON lines to a file), default AUDIT_SUMMARY_SECONDS, a private redis-server, the CyberSource simulator; one onboarded merchant, its token served from the in-memory cache',
    `- response: access token ${r.tokenBytes} bytes, lookup body ${r.bodyBytes} bytes; audit trail checked after the run (every lookup counted once): ${r.audit.join(', ')}`,
    '',
    `| target | what | median req/s | median p50 ms | median p99 ms | server CPU µs/req | server core busy | server CPU µs/req at ${rate} req/s | header + body bytes | req/s per round | p99 ms per round |`,
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |',
    ...rows,
    '',
    `| ratio | req/s (of the medians) | req/s (median of the per-round ratios) | CPU per request (inverse) | CPU per request at ${rate} req/s (inverse) | goal |`,
    '| --- | ---: | ---: | ---: | ---: | --- |',
    ...ratios,
    '',
    '## How to read',
    '',
    '- The static route is the ceiling of a lookup on this machine: Fastify answering the same',
    '  bytes, pre-serialized, with no guard, no logger, no hooks and no validation. broker / static',
    '  is what the broker\'s own work per call costs: the bearer check, a request logger bound to',
    '  the caller, the audit count, merchant id validation, the correlation-id, nosniff and',
    '  no-store headers. Hello world adds the cost of the response size.',
    '- req/s is that of a saturated server loaded from the same machine. It is not linear in the',
    '  work per request: a server slower than the client leaves autocannon idle between answers,',
    '  so that every answer also pays for waking it up (and the client for waking the server),',
    '  which makes a slightly slower server markedly slower. The "server CPU µs/req" column (user',
    '  + system time of the server process over the measured window, from /proc) shows that',
    `  effect; the column at a fixed ${rate} req/s (every server below saturation, the same wake-ups`,
    '  for all) is the steadier guide to what one request costs. "Server core busy" is req/s times',
    '  CPU per request: a server well below 100 % was not the bottleneck (autocannon was, or the',
    '  machine lent the core elsewhere), and its ratios overstate the slower server; the goal is',
    '  not counted as met unless the static route kept its core at least 90 % busy.',
    '- The speed of this shared machine drifts (other tenants), by up to 2x within a minute: the',
    '  broker and the static route take turns of a few seconds within each round, so that drift',
    '  hits both alike, and the ratio is given both of the medians and as the median of the ratios',
    '  within each round. The goal counts as met only when both reach it. p50 and p99 are the',
    '  medians of the turns\'.',
    '- Only the server whose turn it is runs; the other is paused (SIGSTOP). Left running, a',
    '  server\'s leftover background work (garbage collection, compilation) ran on the core of the',
    '  next turn: the static route then used 79 % of its core and the broker measured 0.9-1.0 of',
    '  it, against 0.74-0.78 with pauses.',
    '- Two processes of the same build differ by up to 10 % in req/s (the JIT\'s choices, memory',
    '  layout), which more rounds against one process do not average out: every round starts',
    '  fresh server processes (BENCH_RESTART=0 keeps one per target).',
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
