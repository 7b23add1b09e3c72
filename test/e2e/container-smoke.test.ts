// The container image, without Docker: the Dockerfile and docker-compose.yml are checked as text,
// and the runtime stage is reproduced in a temporary directory (package.json, package-lock.json,
// dist/, `npm ci --omit=dev`), then started with the compose file's environment: it must become
// ready with production dependencies only, pass the image's own HEALTHCHECK command, and refuse
// to start on a bad environment with one line naming the variable and no secret.
import t, { type Test } from 'tap'
import { spawn, execFileSync } from 'node:child_process'
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { request } from 'undici'
import { envFor, secrets, startSimulator } from '../helper.js'
import { startRedis } from '../helpers/redis.js'
import { freePort } from '../../src/net-utils.js'
import { EnvSchema } from '../../src/config.js'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const DEFAULT_SHUTDOWN_GRACE_MS = EnvSchema.properties.SHUTDOWN_GRACE_MS.default as number

// npm ci may download packages: far more than the default per-file timeout.
t.setTimeout(600_000)

// npm test builds first (pretest); a bare `npx tap` on a fresh clone may not have.
if (!existsSync(join(ROOT, 'dist', 'src', 'server.js'))) execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'inherit' })

// ---- Dockerfile ---------------------------------------------------------------------------

interface Instruction { keyword: string, args: string }
interface Stage { from: string, name: string | undefined, instructions: Instruction[] }

function parseDockerfile (text: string): Stage[] {
  const logical: string[] = []
  let pending = ''
  for (const raw of text.split('\n')) {
    const line = raw.trimEnd()
    if (/^\s*#/.test(line) || (line.trim() === '' && pending === '')) continue
    if (line.endsWith('\\')) {
      pending += line.slice(0, -1) + ' '
      continue
    }
    logical.push((pending + line).trim())
    pending = ''
  }
  if (pending !== '') logical.push(pending.trim())
  const stages: Stage[] = []
  for (const line of logical) {
    const m = /^([A-Za-z]+)\s+(.*)$/.exec(line)
    if (m === null) throw new Error(`Dockerfile: cannot read ${JSON.stringify(line)}`)
    const keyword = m[1].toUpperCase()
    const args = m[2].trim()
    if (keyword === 'FROM') {
      const f = /^(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args)
      if (f === null) throw new Error(`Dockerfile: bad FROM ${args}`)
      stages.push({ from: f[1], name: f[2], instructions: [] })
    } else {
      const stage = stages.at(-1)
      if (stage === undefined) throw new Error(`Dockerfile: ${keyword} before FROM`)
      stage.instructions.push({ keyword, args })
    }
  }
  return stages
}

/** ENV k=v k2="v 2" (or the legacy ENV k v). */
function envOf (stage: Stage): Record<string, string> {
  const env: Record<string, string> = {}
  for (const { args } of stage.instructions.filter(i => i.keyword === 'ENV')) {
    if (!/^\S+=/.test(args)) {
      const [k, ...rest] = args.split(/\s+/)
      env[k] = rest.join(' ')
      continue
    }
    for (const m of args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)/g)) env[m[1]] = m[2].replace(/^"(.*)"$/, '$1')
  }
  return env
}

const execForm = (args: string): unknown => { try { return JSON.parse(args) } catch { return undefined } }

// ---- a YAML subset (block maps and lists, flow lists, quoted and plain scalars) -------------

type Yaml = string | null | Yaml[] | { [key: string]: Yaml }
interface YLine { indent: number, text: string, n: number }

function unquote (s: string): string {
  if (s.startsWith('"') && s.endsWith('"') && s.length >= 2) return JSON.parse(s) as string
  if (s.startsWith("'") && s.endsWith("'") && s.length >= 2) return s.slice(1, -1).replace(/''/g, "'")
  return s
}

function scalar (s: string, n: number): Yaml {
  if (s.startsWith('[')) {
    if (!s.endsWith(']')) throw new Error(`yaml line ${n}: unterminated flow list`)
    const inner = s.slice(1, -1).trim()
    if (inner === '') return []
    const items = inner.match(/"(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[^,\s][^,]*/g) ?? []
    return items.map(i => unquote(i.trim()))
  }
  if (s.startsWith('{') || s.startsWith('&') || s.startsWith('*') || s.startsWith('|') || s.startsWith('>')) {
    throw new Error(`yaml line ${n}: unsupported syntax ${s}`)
  }
  return unquote(s)
}

function stripComment (line: string): string {
  let quote: string | undefined
  for (let i = 0; i < line.length; i++) {
    const c = line[i]
    if (quote !== undefined) { if (c === quote) quote = undefined; continue }
    if (c === '"' || c === "'") quote = c
    else if (c === '#' && (i === 0 || line[i - 1] === ' ')) return line.slice(0, i)
  }
  return line
}

function parseYaml (text: string): Yaml {
  const lines: YLine[] = []
  for (const [i, raw] of text.split('\n').entries()) {
    if (raw.includes('\t')) throw new Error(`yaml line ${i + 1}: tab`)
    const body = stripComment(raw).trimEnd()
    if (body.trim() === '') continue
    lines.push({ indent: body.length - body.trimStart().length, text: body.trim(), n: i + 1 })
  }
  let pos = 0
  function block (indent: number): Yaml {
    const first = lines[pos]
    if (first.text === '-' || first.text.startsWith('- ')) {
      const list: Yaml[] = []
      while (pos < lines.length && lines[pos].indent === indent && (lines[pos].text === '-' || lines[pos].text.startsWith('- '))) {
        const { text, n } = lines[pos++]
        const item = text.slice(1).trim()
        if (item === '') list.push(pos < lines.length && lines[pos].indent > indent ? block(lines[pos].indent) : null)
        else if (/^[^"'[][^:]*:(\s|$)/.test(item)) throw new Error(`yaml line ${n}: maps inside lists are not supported`)
        else list.push(scalar(item, n))
      }
      return list
    }
    const map: Record<string, Yaml> = {}
    while (pos < lines.length && lines[pos].indent === indent) {
      const { text, n } = lines[pos++]
      const m = /^("[^"]*"|'[^']*'|[^\s"'][^:]*?):(?:\s+(.*))?$/.exec(text)
      if (m === null) throw new Error(`yaml line ${n}: expected key: value, got ${text}`)
      const key = unquote(m[1])
      if (key in map) throw new Error(`yaml line ${n}: duplicate key ${key}`)
      if (m[2] !== undefined && m[2] !== '') map[key] = scalar(m[2], n)
      else map[key] = pos < lines.length && lines[pos].indent > indent ? block(lines[pos].indent) : null
    }
    if (pos < lines.length && lines[pos].indent > indent) throw new Error(`yaml line ${lines[pos].n}: unexpected indentation`)
    return map
  }
  const doc = block(0)
  if (pos !== lines.length) throw new Error(`yaml line ${lines[pos].n}: unexpected dedent`)
  return doc
}

const asMap = (y: Yaml | undefined, what: string): Record<string, Yaml> => {
  if (y === null || y === undefined || typeof y === 'string' || Array.isArray(y)) throw new Error(`${what} is not a mapping`)
  return y
}
const words = (y: Yaml | undefined): string[] => typeof y === 'string' ? y.split(/\s+/) : Array.isArray(y) ? y.map(String) : []
const after = (list: string[], flag: string): string | undefined => { const i = list.indexOf(flag); return i < 0 ? undefined : list[i + 1] }

function durationMs (s: string): number {
  let ms = 0
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/g
  if (!/^((\d+(?:\.\d+)?)(ms|s|m|h))+$/.test(s)) return NaN
  for (const m of s.matchAll(re)) ms += Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h']
  return ms
}

// ---- running the runtime stage --------------------------------------------------------------

interface Run { code: number | null, stdout: string, stderr: string }

async function run (cmd: string, args: string[], opts: { cwd: string, env: Record<string, string | undefined>, timeoutMs: number }): Promise<Run> {
  return await new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { cwd: opts.cwd, env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    p.stdout.on('data', (c: Buffer) => { stdout += c.toString() })
    p.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
    const timer = setTimeout(() => { p.kill('SIGKILL'); reject(new Error(`${cmd} ${args.join(' ')}: still running after ${opts.timeoutMs} ms\n${stdout}${stderr}`)) }, opts.timeoutMs)
    p.once('error', reject)
    p.once('exit', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }) })
  })
}

let image: string | undefined
/** The runtime stage's /app: package files, dist/, production dependencies. Built once per file. */
async function runtimeDir (): Promise<string> {
  if (image !== undefined) return image
  const dir = mkdtempSync(join(tmpdir(), 'cybs-runtime-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  cpSync(join(ROOT, 'package.json'), join(dir, 'package.json'))
  cpSync(join(ROOT, 'package-lock.json'), join(dir, 'package-lock.json'))
  cpSync(join(ROOT, 'dist'), join(dir, 'dist'), { recursive: true })
  const npm = await run('npm', ['ci', '--omit=dev', '--ignore-scripts', '--prefer-offline', '--no-audit', '--no-fund'], { cwd: dir, env: process.env, timeoutMs: 540_000 })
  if (npm.code !== 0) throw new Error(`npm ci failed (${npm.code}):\n${npm.stdout}${npm.stderr}`)
  image = dir
  return dir
}

/** The compose file's environment for the broker, pointed at a private Redis and the simulator. */
async function composeEnv (t: Test): Promise<{ env: Record<string, string>, s: ReturnType<typeof secrets> }> {
  const redis = await startRedis(t)
  const s = secrets()
  const sim = await startSimulator(t, { clientSecret: s.clientSecret })
  const port = await freePort()
  const env = envFor(s, redis.url, sim.url, {
    NODE_ENV: 'production',
    // Every server in the tests binds loopback; the image itself sets 0.0.0.0.
    HOST: '127.0.0.1',
    PORT: String(port),
    PUBLIC_BASE_URL: `http://127.0.0.1:${port}`
  })
  return { env, s }
}

const secretValues = (s: ReturnType<typeof secrets>): Record<string, string> => ({
  clientSecret: s.clientSecret, apiSecret: s.apiSecret, otherApiSecret: s.otherApiSecret, encryptionKey: s.encryptionKey
})

// ---- tests ----------------------------------------------------------------------------------

t.test('Dockerfile: multi-stage, production dependencies, non-root, tini, health check, CMD', async t => {
  const stages = parseDockerfile(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'))
  t.ok(stages.length >= 2, `multi-stage build (${stages.length} stages)`)
  const build = stages[0]
  const runtime = stages.at(-1) as Stage
  t.ok(build.name !== undefined, 'the build stage is named')
  for (const stage of stages) {
    const major = Number(/^node:(\d+)/.exec(stage.from)?.[1])
    t.ok(major >= 20, `${stage.name ?? stage.from}: a Node ${major} base image (engines: >=20)`)
  }
  const runs = (s: Stage): string[] => s.instructions.filter(i => i.keyword === 'RUN').map(i => i.args)
  t.ok(runs(build).some(r => /\bnpm (run build|exec tsc)\b|\btsc\b/.test(r)), 'the build stage compiles')
  t.ok(runs(runtime).some(r => /\bnpm ci\b[^&;|]*--omit=dev/.test(r)), 'npm ci --omit=dev in the runtime stage')
  t.notOk(runs(runtime).some(r => /\bnpm (run build|install)\b|\btsc\b/.test(r)), 'the runtime stage neither compiles nor installs dev tools')
  t.ok(runtime.instructions.some(i => i.keyword === 'COPY' && new RegExp(`--from=${build.name ?? '0'}\\b`).test(i.args) && /\bdist\b/.test(i.args)),
    'dist/ copied from the build stage')
  // From the build context, the runtime stage takes the package files only (not ., src, test, node_modules).
  const fromContext = runtime.instructions
    .filter(i => (i.keyword === 'COPY' || i.keyword === 'ADD') && !/--from=/.test(i.args))
    .flatMap(i => i.args.split(/\s+/).filter(a => !a.startsWith('--')).slice(0, -1))
  t.same(fromContext.filter(src => !['package.json', 'package-lock.json'].includes(src)), [],
    `only package.json and package-lock.json come from the build context (${fromContext.join(', ')})`)

  const env = envOf(runtime)
  t.equal(env.NODE_ENV, 'production', 'NODE_ENV=production')
  t.equal(env.HOST, '0.0.0.0', 'HOST=0.0.0.0')

  const users = runtime.instructions.filter(i => i.keyword === 'USER').map(i => i.args)
  t.ok(users.length > 0, 'a USER in the runtime stage')
  const user = users.at(-1) ?? ''
  t.notOk(/^(root|0)(:|$)/.test(user), `non-root user (${user})`)
  const userIndex = runtime.instructions.findLastIndex(i => i.keyword === 'USER')
  t.ok(runtime.instructions.slice(userIndex).every(i => i.keyword !== 'RUN'), 'nothing runs as root after USER')

  const entrypoint = execForm(runtime.instructions.findLast(i => i.keyword === 'ENTRYPOINT')?.args ?? '')
  t.ok(Array.isArray(entrypoint), 'ENTRYPOINT in exec form')
  t.match(String((entrypoint as string[] | undefined)?.[0]), /(^|\/)tini$/, 'tini is the init process')
  t.ok(runs(runtime).some(r => /\btini\b/.test(r)), 'and it is installed')

  const health = runtime.instructions.findLast(i => i.keyword === 'HEALTHCHECK')?.args ?? ''
  t.match(health, /\bCMD\b/, 'a HEALTHCHECK command')
  t.match(health, /\/health\/ready\b/, 'HEALTHCHECK on /health/ready')

  t.same(execForm(runtime.instructions.findLast(i => i.keyword === 'CMD')?.args ?? ''), ['node', 'dist/src/server.js'], 'CMD ["node", "dist/src/server.js"]')
  t.ok(existsSync(join(ROOT, 'dist', 'src', 'server.js')), 'the CMD file is what the build produces')
})

t.test('docker-compose.yml: Redis append-only on a volume with a health check, broker waits for it, simulator profile', async t => {
  const doc = asMap(parseYaml(readFileSync(join(ROOT, 'docker-compose.yml'), 'utf8')), 'the compose file')
  const services = asMap(doc.services, 'services')
  const redis = asMap(services.redis, 'services.redis')
  const command = words(redis.command)
  t.equal(after(command, '--appendonly'), 'yes', 'appendonly yes')
  t.equal(after(command, '--appendfsync'), 'everysec', 'appendfsync everysec')
  const volumes = Object.keys(doc.volumes === null || doc.volumes === undefined ? {} : asMap(doc.volumes, 'volumes'))
  const mounts = words(redis.volumes).filter(v => v.endsWith(':/data'))
  t.equal(mounts.length, 1, 'a volume on /data')
  t.ok(volumes.includes(mounts[0]?.split(':')[0] ?? ''), `a named volume (${mounts[0] ?? 'none'}; declared: ${volumes.join(', ')})`)
  const healthcheck = asMap(redis.healthcheck, 'services.redis.healthcheck')
  t.ok(words(healthcheck.test).length > 0 && healthcheck.disable !== 'true', 'redis has a health check')
  t.match(words(healthcheck.test).join(' '), /redis-cli.*ping/)
  t.equal(redis.profiles, undefined, 'redis starts by default')

  const broker = asMap(services.broker, 'services.broker')
  t.equal(asMap(asMap(broker.depends_on, 'broker.depends_on').redis, 'broker.depends_on.redis').condition, 'service_healthy',
    'the broker waits for redis to be healthy')
  t.equal(broker.profiles, undefined, 'the broker starts by default')
  const brokerEnv = asMap(broker.environment, 'broker.environment')
  t.match(brokerEnv.REDIS_URL, /^redis:\/\/redis:\d+$/, 'the broker uses the redis service')
  t.equal(brokerEnv.HOST, '0.0.0.0')
  if (typeof broker.stop_grace_period === 'string') {
    t.ok(durationMs(broker.stop_grace_period) > DEFAULT_SHUTDOWN_GRACE_MS,
      `stop_grace_period (${broker.stop_grace_period}) leaves SHUTDOWN_GRACE_MS (${DEFAULT_SHUTDOWN_GRACE_MS} ms) time to finish`)
  }

  const simulator = asMap(services.simulator, 'services.simulator')
  t.same(words(simulator.profiles), ['simulator'], 'the simulator runs under the simulator profile')
  const simCommand = words(simulator.command)
  t.equal(simCommand[0], 'node')
  t.ok(existsSync(join(ROOT, simCommand[1] ?? 'missing')), `the simulator's entry point exists in the build (${simCommand[1]})`)
})

t.test('the YAML subset parser reads what it claims and rejects the rest', async t => {
  t.same(parseYaml('a:\n  b: "x: y" # c\n  c: [ "p", q ]\n  d:\n    - 1\n    - \'two\'\ne:\n'), { a: { b: 'x: y', c: ['p', 'q'], d: ['1', 'two'] }, e: null })
  t.throws(() => parseYaml('a: 1\na: 2\n'), /duplicate/)
  t.throws(() => parseYaml('a: &x 1\n'), /unsupported/)
  t.throws(() => parseYaml('a:\n  - b: 1\n'), /not supported/)
  t.throws(() => parseYaml('a: 1\n   b: 2\n'), /indentation|dedent/)
})

t.test('the runtime stage outside Docker: production dependencies only, ready, HEALTHCHECK passes', async t => {
  const dir = await runtimeDir()
  t.notOk(existsSync(join(dir, 'node_modules', 'typescript')), 'no dev dependency installed (typescript)')
  t.notOk(existsSync(join(dir, 'node_modules', 'tap')), 'no dev dependency installed (tap)')
  t.ok(existsSync(join(dir, 'node_modules', 'fastify')), 'production dependencies installed')

  const { env, s } = await composeEnv(t)
  const base = `http://127.0.0.1:${env.PORT}`
  // Only PATH from this process: no NODE_PATH or anything else that could reach the dev tree.
  const proc = spawn(process.execPath, ['dist/src/server.js'], { cwd: dir, env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  proc.stdout.on('data', (c: Buffer) => { output += c.toString() })
  proc.stderr.on('data', (c: Buffer) => { output += c.toString() })
  const exited = new Promise<number | null>(resolve => proc.once('exit', code => resolve(code)))
  t.teardown(() => { if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL') })

  let ready = 0
  const deadline = Date.now() + 20_000
  while (Date.now() < deadline && proc.exitCode === null) {
    ready = await request(`${base}/health/ready`).then(async r => { await r.body.dump(); return r.statusCode }, () => 0)
    if (ready === 200) break
    await sleep(100)
  }
  t.equal(ready, 200, `/health/ready → 200${ready === 200 ? '' : `\n${output}`}`)
  const live = await request(`${base}/health/live`)
  await live.body.dump()
  t.equal(live.statusCode, 200, '/health/live → 200')

  // The image's own HEALTHCHECK command, run as Docker would run it (inside the container).
  const stages = parseDockerfile(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'))
  const health = stages.at(-1)?.instructions.findLast(i => i.keyword === 'HEALTHCHECK')?.args ?? ''
  const cmd = execForm(health.replace(/^.*?\bCMD\s+/, '')) as string[] | undefined
  t.ok(Array.isArray(cmd) && cmd.length > 0, 'HEALTHCHECK CMD in exec form')
  if (Array.isArray(cmd)) {
    const [bin, ...args] = cmd
    const check = await run(bin === 'node' ? process.execPath : bin, args, { cwd: dir, env: { PATH: process.env.PATH ?? '', ...env }, timeoutMs: 10_000 })
    t.equal(check.code, 0, `the HEALTHCHECK passes while ready ${check.stderr}`)
  }

  // A request that needs production dependencies beyond the health routes (undici, swagger).
  const connect = await request(`${base}/oauth/connect`)
  await connect.body.dump()
  t.equal(connect.statusCode, 302)
  t.match(String(connect.headers.location), `${env.CYBS_AUTHORIZE_URL}?`)
  const docs = await request(`${base}/docs/json`, { headers: { authorization: `Bearer ${s.apiSecret}` } })
  t.equal(docs.statusCode, 200, 'the OpenAPI document')
  await docs.body.dump()

  proc.kill('SIGTERM')
  t.equal(await exited, 0, 'exits 0 on SIGTERM')
  t.notOk(output.includes('\u001b['), 'no colours: production logs are plain JSON')
  t.ok(output.split('\n').filter(l => l !== '').every(l => l.startsWith('{')), 'every output line is a JSON log line')
  t.same(Object.entries(secretValues(s)).filter(([, v]) => output.includes(v)).map(([k]) => k), [], 'no secret in the output')

  if (Array.isArray(cmd)) {
    const [bin, ...args] = cmd
    const check = await run(bin === 'node' ? process.execPath : bin, args, { cwd: dir, env: { PATH: process.env.PATH ?? '', ...env }, timeoutMs: 10_000 })
    t.not(check.code, 0, 'the HEALTHCHECK fails once the service is gone')
  }
})

t.test('the runtime stage refuses a bad environment: exit 1, one line naming the variable, no secret', async t => {
  const dir = await runtimeDir()
  const { env, s } = await composeEnv(t)
  const cases: Array<{ what: string, variable: string, env: Record<string, string> }> = [
    { what: 'a missing required variable', variable: 'CYBS_CLIENT_ID', env: Object.fromEntries(Object.entries(env).filter(([k]) => k !== 'CYBS_CLIENT_ID')) },
    { what: 'a malformed secret', variable: 'INTERNAL_API_KEYS', env: { ...env, INTERNAL_API_KEYS: `payments:${s.apiSecret.slice(0, 20)}` } },
    { what: 'a malformed encryption key', variable: 'TOKEN_ENCRYPTION_KEYS', env: { ...env, TOKEN_ENCRYPTION_KEYS: `k1:${s.encryptionKey.slice(0, 24)}` } }
  ]
  for (const c of cases) {
    const res = await run(process.execPath, ['dist/src/server.js'], { cwd: dir, env: { PATH: process.env.PATH ?? '', ...c.env }, timeoutMs: 20_000 })
    t.equal(res.code, 1, `${c.what}: exit status 1`)
    const lines = res.stderr.split('\n').filter(l => l !== '')
    t.equal(lines.length, 1, `${c.what}: one line on stderr (${res.stderr.trim()})`)
    t.match(lines[0], c.variable, `${c.what}: the line names ${c.variable}`)
    t.equal(res.stdout, '', `${c.what}: nothing on stdout`)
    const out = res.stdout + res.stderr
    const values = { ...secretValues(s), shortApiSecret: s.apiSecret.slice(0, 20), shortKey: s.encryptionKey.slice(0, 24) }
    t.same(Object.entries(values).filter(([, v]) => out.includes(v)).map(([k]) => k), [], `${c.what}: no secret value in the output`)
  }
})
