// The container setup, without Docker: the Dockerfile is checked line by line, the compose files
// with the yaml package, and their environments are fed to loadConfig with the secret files remapped
// from /run/secrets to the repository (demo) or to files made here (production). The runtime stage
// is reproduced in a temporary directory (package.json, package-lock.json, dist/,
// `npm ci --omit=dev`) and started with the demo's compose environment: it must become ready with
// production dependencies only, pass the image's own HEALTHCHECK command, onboard a merchant
// through the simulator, and refuse a bad environment with one line naming the variable and no secret.
import t, { type Test } from 'tap'
import { spawn, execFileSync } from 'node:child_process'
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { request } from 'undici'
import { parse, parseDocument } from 'yaml'
import { startSimulator } from '../helper.js'
import { startRedis } from '../helpers/redis.js'
import { freePort } from '../../src/net-utils.js'
import { EnvSchema, SECRET_VARIABLES, loadConfig } from '../../src/config.js'
import { AUTHORIZE_PATH, TOKEN_PATH } from '../../src/simulator/app.js'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const DEFAULT_SHUTDOWN_GRACE_MS = EnvSchema.properties.SHUTDOWN_GRACE_MS.default as number
const read = (path: string): string => readFileSync(join(ROOT, path), 'utf8')

// npm ci may download packages: far more than the default per-file timeout.
t.setTimeout(600_000)

// npm test builds first (pretest); a bare `npx tap` on a fresh clone may not have.
if (!existsSync(join(ROOT, 'dist', 'src', 'server.js'))) execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'inherit' })

// ---- Dockerfile: one instruction per line once continuation lines are joined ------------------

const dockerfile = read('Dockerfile').replace(/\\\n/g, ' ').split('\n').map(l => l.trim()).filter(l => l !== '' && !l.startsWith('#'))
const fromLines = dockerfile.flatMap((l, i) => /^FROM\s/i.test(l) ? [i] : [])
const buildStage = dockerfile.slice(fromLines[0], fromLines[1])
const runtimeStage = dockerfile.slice(fromLines.at(-1))
/** The arguments of every `KEYWORD …` line of a stage. */
const args = (stage: string[], keyword: string): string[] => stage.filter(l => l.startsWith(`${keyword} `)).map(l => l.slice(keyword.length + 1).trim())
const healthcheckCommand = (): string[] => JSON.parse(args(runtimeStage, 'HEALTHCHECK').at(-1)?.replace(/^.*?\bCMD\s+/, '') ?? 'null') as string[]

// ---- compose files ------------------------------------------------------------------------------

interface Service {
  build?: unknown
  command?: string[]
  environment?: Record<string, string>
  env_file?: string | string[]
  secrets?: Array<string | { source: string, target?: string }>
  ports?: string[]
  expose?: string[]
  profiles?: string[]
  depends_on?: Record<string, { condition?: string }>
  deploy?: { replicas?: number }
  healthcheck?: { test?: string[], disable?: boolean }
  stop_grace_period?: string
  volumes?: string[]
}
interface ComposeFile { services: Record<string, Service>, secrets?: Record<string, { file?: string }>, volumes?: Record<string, unknown> }

const compose = parse(read('docker-compose.yml')) as ComposeFile
const PRODUCTION_LAYER = 'deploy/compose.production.yml'
const productionDoc = parseDocument(read(PRODUCTION_LAYER))
const production = productionDoc.toJS() as ComposeFile

const after = (list: string[] | undefined, flag: string): string | undefined => { const i = list?.indexOf(flag) ?? -1; return i < 0 ? undefined : list?.[i + 1] }

function durationMs (s: string): number {
  if (!/^((\d+(?:\.\d+)?)(ms|s|m|h))+$/.test(s)) return NaN
  let ms = 0
  for (const m of s.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)) ms += Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h']
  return ms
}

/** The host ports a service publishes for a container port ("[ip:]host[-end]:container"). */
function hostPorts (service: Service, containerPort: string): number[] {
  const ports: number[] = []
  for (const p of service.ports ?? []) {
    const m = /^(?:[\d.]+:)?(\d+)(?:-(\d+))?:(\d+)$/.exec(p)
    if (m === null || m[3] !== containerPort) continue
    for (let port = Number(m[1]); port <= Number(m[2] ?? m[1]); port++) ports.push(port)
  }
  return ports
}

const mountedSecrets = (service: Service): string[] => (service.secrets ?? []).map(s => typeof s === 'string' ? s : (s.target ?? s.source))

/** Each NAME_FILE of a service as [variable, secret name]; a path outside /run/secrets/ fails the test. */
function fileVariables (t: Test, where: string, service: Service, declared: Record<string, { file?: string }>): Array<[string, string]> {
  const found: Array<[string, string]> = []
  for (const [name, value] of Object.entries(service.environment ?? {}).filter(([k]) => k.endsWith('_FILE'))) {
    const secret = /^\/run\/secrets\/([A-Za-z0-9_.-]+)$/.exec(value)?.[1]
    t.ok(secret !== undefined, `${where}: ${name} is a path under /run/secrets/ (${value})`)
    if (secret === undefined) continue
    t.ok(mountedSecrets(service).includes(secret), `${where}: ${name} → secret ${secret}, mounted by the service`)
    t.ok(declared[secret]?.file !== undefined, `${where}: secret ${secret} is declared with a file`)
    found.push([name, secret])
  }
  return found
}

/** The demo broker's environment, runnable here: each NAME_FILE names its file in deploy/demo-secrets/. */
function demoEnv (t: Test): Record<string, string> {
  const { broker } = compose.services
  const declared = compose.secrets ?? {}
  const env = { ...broker.environment }
  for (const [name, secret] of fileVariables(t, 'broker', broker, declared)) env[name] = join(ROOT, declared[secret]?.file ?? '')
  return env
}

// ---- running the runtime stage --------------------------------------------------------------

interface Run { code: number | null, stdout: string, stderr: string }

async function run (cmd: string, argv: string[], opts: { cwd: string, env: Record<string, string | undefined>, timeoutMs: number }): Promise<Run> {
  return await new Promise((resolve, reject) => {
    const p = spawn(cmd, argv, { cwd: opts.cwd, env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    p.stdout.on('data', (c: Buffer) => { stdout += c.toString() })
    p.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
    const timer = setTimeout(() => { p.kill('SIGKILL'); reject(new Error(`${cmd} ${argv.join(' ')}: still running after ${opts.timeoutMs} ms\n${stdout}${stderr}`)) }, opts.timeoutMs)
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

/**
 * The demo's compose environment for the broker, with what only exists inside compose moved to
 * this machine: a private Redis, a local simulator registered like the compose one, a free port.
 */
async function composeEnv (t: Test): Promise<{ env: Record<string, string>, demoSecrets: string[] }> {
  const redis = await startRedis(t)
  const port = await freePort()
  const internalPort = await freePort()
  const base = `http://127.0.0.1:${port}`
  const simEnv = compose.services.simulator.environment ?? {}
  const sim = await startSimulator(t, { clientId: simEnv.CYBS_CLIENT_ID, clientSecret: simEnv.CYBS_CLIENT_SECRET, redirectUrl: `${base}/oauth/callback` })
  const env: Record<string, string> = {
    ...demoEnv(t),
    // Every server in the tests binds loopback; the image itself sets 0.0.0.0.
    HOST: '127.0.0.1',
    PORT: String(port),
    INTERNAL_PORT: String(internalPort),
    PUBLIC_BASE_URL: base,
    REDIS_URL: redis.url,
    CYBS_AUTHORIZE_URL: `${sim.url}${AUTHORIZE_PATH}`,
    CYBS_TOKEN_URL: `${sim.url}${TOKEN_PATH}`
  }
  const demoSecrets = SECRET_VARIABLES.flatMap(name => {
    const path = env[`${name}_FILE`]
    if (path === undefined) return []
    return readFileSync(path, 'utf8').trim().split(',').map(item => item.slice(item.indexOf(':') + 1))
  })
  return { env, demoSecrets }
}

const leaked = (output: string, secrets: string[]): string[] => secrets.filter(s => output.includes(s))

// ---- tests ----------------------------------------------------------------------------------

t.test('Dockerfile: multi-stage, Node 24, production dependencies, non-root, tini, health check, CMD', async t => {
  t.ok(fromLines.length >= 2, `multi-stage build (${fromLines.length} stages)`)
  const nvmrc = read('.nvmrc').trim()
  for (const i of fromLines) t.match(dockerfile[i], new RegExp(`^FROM node:${nvmrc}-bookworm-slim(\\s|$)`), `${dockerfile[i]}: Node ${nvmrc} as in .nvmrc`)
  t.match((JSON.parse(read('package.json')) as { engines: { node: string } }).engines.node, `>=${nvmrc}`, 'and as engines requires')
  const buildName = /\sAS\s+(\S+)$/i.exec(buildStage[0])?.[1]
  t.ok(buildName !== undefined, 'the build stage is named')

  t.ok(args(buildStage, 'RUN').some(r => /\bnpm (run build|exec tsc)\b|\btsc\b/.test(r)), 'the build stage compiles')
  const runs = args(runtimeStage, 'RUN')
  t.ok(runs.some(r => /\bnpm ci\b[^&;|]*--omit=dev/.test(r)), 'npm ci --omit=dev in the runtime stage')
  t.notOk(runs.some(r => /\bnpm (run build|install)\b|\btsc\b/.test(r)), 'the runtime stage neither compiles nor installs dev tools')
  const copies = args(runtimeStage, 'COPY')
  t.ok(copies.some(c => c.includes(`--from=${buildName ?? '0'} `) && /\bdist\b/.test(c)), 'dist/ copied from the build stage')
  // From the build context, the runtime stage takes the package files only (not ., src, test, node_modules).
  const fromContext = [...copies, ...args(runtimeStage, 'ADD')].filter(c => !c.includes('--from=')).flatMap(c => c.split(/\s+/).filter(a => !a.startsWith('--')).slice(0, -1))
  t.same(fromContext.filter(src => !['package.json', 'package-lock.json'].includes(src)), [],
    `only package.json and package-lock.json come from the build context (${fromContext.join(', ')})`)

  const env = args(runtimeStage, 'ENV').join(' ')
  t.match(env, /(^|\s)NODE_ENV=production(\s|$)/, 'NODE_ENV=production')
  t.match(env, /(^|\s)HOST=0\.0\.0\.0(\s|$)/, 'HOST=0.0.0.0')

  const userLine = runtimeStage.findLastIndex(l => l.startsWith('USER '))
  t.ok(userLine > 0, 'a USER in the runtime stage')
  t.notMatch(runtimeStage[userLine] ?? '', /^USER\s+(root|0)(:|\s|$)/, `non-root user (${runtimeStage[userLine]})`)
  t.notOk(runtimeStage.slice(userLine).some(l => l.startsWith('RUN ')), 'nothing runs as root after USER')

  t.match(args(runtimeStage, 'ENTRYPOINT').at(-1), /^\["(?:[^"]*\/)?tini",/, 'ENTRYPOINT in exec form, tini is the init process')
  t.ok(runs.some(r => /\btini\b/.test(r)), 'and it is installed')

  t.match(args(runtimeStage, 'HEALTHCHECK').at(-1), /\bCMD\b.*\/health\/ready\b/, 'HEALTHCHECK on /health/ready')
  t.ok(Array.isArray(healthcheckCommand()), 'HEALTHCHECK CMD in exec form')
  t.same(JSON.parse(args(runtimeStage, 'CMD').at(-1) ?? 'null'), ['node', 'dist/src/server.js'], 'CMD ["node", "dist/src/server.js"]')
  t.ok(existsSync(join(ROOT, 'dist', 'src', 'server.js')), 'the CMD file is what the build produces')

  const ignored = read('.dockerignore').split('\n').map(l => l.trim())
  t.same(['secrets', 'deploy'].filter(d => !ignored.includes(d)), [], 'secret folders stay out of the build context')
})

t.test('docker-compose.yml: Redis append-only on a volume with a health check, broker waits for it, simulator profile', async t => {
  const { redis, broker, simulator } = compose.services
  t.equal(after(redis.command, '--appendonly'), 'yes', 'appendonly yes')
  t.equal(after(redis.command, '--appendfsync'), 'everysec', 'appendfsync everysec')
  const mounts = (redis.volumes ?? []).filter(v => v.endsWith(':/data'))
  t.equal(mounts.length, 1, 'a volume on /data')
  t.ok(Object.keys(compose.volumes ?? {}).includes(mounts[0]?.split(':')[0] ?? ''), `a named volume (${mounts[0] ?? 'none'})`)
  t.match(redis.healthcheck?.test?.join(' '), /redis-cli.*ping/, 'redis has a health check')
  t.equal(redis.profiles, undefined, 'redis starts by default')

  t.equal(broker.depends_on?.redis?.condition, 'service_healthy', 'the broker waits for redis to be healthy')
  t.equal(broker.profiles, undefined, 'the broker starts by default')
  t.match(broker.environment?.REDIS_URL, /^redis:\/\/redis:\d+$/, 'the broker uses the redis service')
  t.equal(broker.environment?.HOST, '0.0.0.0', 'the broker listens beyond its own loopback')
  t.ok(durationMs(broker.stop_grace_period ?? '10s') > DEFAULT_SHUTDOWN_GRACE_MS,
    `stop_grace_period (${broker.stop_grace_period ?? 'compose default 10s'}) leaves SHUTDOWN_GRACE_MS (${DEFAULT_SHUTDOWN_GRACE_MS} ms) time to finish`)

  t.same(simulator.profiles, ['simulator'], 'the simulator runs under the simulator profile')
  t.equal(simulator.command?.[0], 'node', 'the simulator runs from the same image')
  t.ok(existsSync(join(ROOT, simulator.command?.[1] ?? 'missing')), `the simulator's entry point exists in the build (${simulator.command?.[1]})`)
})

t.test('the simulator profile is a working demo with no edits', async t => {
  const { broker, simulator } = compose.services
  const env = broker.environment ?? {}
  const simEnv = simulator.environment ?? {}
  t.equal(env.CYBS_ENVIRONMENT, 'simulator', 'the broker talks to the simulator')

  const [brokerPort] = hostPorts(broker, env.PORT ?? '3000')
  t.equal(env.PUBLIC_BASE_URL, `http://127.0.0.1:${brokerPort}`, 'PUBLIC_BASE_URL is the port the broker publishes')
  t.ok((broker.deploy?.replicas ?? 1) <= hostPorts(broker, env.PORT ?? '3000').length, 'a published port for every replica')
  const simPort = simEnv.SIMULATOR_PORT ?? '4010'
  const [simHostPort] = hostPorts(simulator, simPort)
  t.equal(env.CYBS_AUTHORIZE_URL, `http://127.0.0.1:${simHostPort}${AUTHORIZE_PATH}`, 'the browser reaches the consent page on the published port')
  t.equal(env.CYBS_TOKEN_URL, `http://simulator:${simPort}${TOKEN_PATH}`, 'the broker reaches the token endpoint by service name')
  t.equal(simEnv.SIMULATOR_HOST, '0.0.0.0', 'the simulator listens beyond its own loopback')
  t.ok(env.INTERNAL_PORT !== undefined, 'the internal API has a port of its own')
  t.same((broker.ports ?? []).filter(p => p.endsWith(`:${env.INTERNAL_PORT ?? ''}`)).map(p => p.split(':')[0]), ['127.0.0.1'], 'published on loopback only')
  t.match(simulator.healthcheck?.test?.join(' '), `http://127.0.0.1:${simPort}/__sim/`, "the simulator's health check asks the simulator")

  t.same(fileVariables(t, 'broker', broker, compose.secrets ?? {}).map(([name]) => name).sort(),
    ['CYBS_CLIENT_SECRET_FILE', 'INTERNAL_API_KEYS_FILE', 'TOKEN_ENCRYPTION_KEYS_FILE'], 'every secret comes from a file')
  for (const [name, { file }] of Object.entries(compose.secrets ?? {})) {
    t.match(file, /^\.\/deploy\/demo-secrets\/[^/]+$/, `${name}: a demo file under deploy/demo-secrets/`)
  }

  const config = loadConfig(demoEnv(t))
  t.equal(config.cybs.environment, 'simulator', 'loadConfig accepts the demo environment')
  t.equal(config.cybs.clientId, simEnv.CYBS_CLIENT_ID, 'the simulator knows the broker as its client')
  t.equal(config.cybs.clientSecret, simEnv.CYBS_CLIENT_SECRET, 'with the secret of the demo file')
  t.equal(config.cybs.redirectUrl, simEnv.CYBS_REDIRECT_URL, 'and its redirect URL')
  t.same(config.encryptionKeys.map(k => k.kid), ['demo'], 'the demo encryption key')
  t.same(config.internalApiKeys.map(k => k.caller), ['demo'], 'the demo internal API caller')
})

t.test(`${PRODUCTION_LAYER}: the operator's .env and secret files replace the demo's`, async t => {
  t.same(productionDoc.errors, [], 'valid YAML')
  t.same(productionDoc.warnings.map(w => w.message).filter(m => !/^Unresolved tag: !(override|reset)\b/.test(m)), [], 'only compose tags unknown to YAML')
  const broker = production.services.broker
  for (const key of ['environment', 'secrets', 'ports']) {
    t.equal((productionDoc.getIn(['services', 'broker', key], true) as { tag?: string } | undefined)?.tag, '!override', `${key}: !override, not merged with the demo's`)
  }
  t.equal(broker.env_file, '.env', 'the settings come from .env')
  for (const name of ['CYBS_ENVIRONMENT', 'CYBS_AUTHORIZE_URL', 'CYBS_TOKEN_URL', 'CYBS_CLIENT_ID', 'PUBLIC_BASE_URL']) {
    t.notOk(name in (broker.environment ?? {}), `${name} comes from .env`)
  }
  t.ok((broker.deploy?.replicas ?? 1) <= hostPorts(broker, broker.environment?.PORT ?? '3000').length, 'a published port for every replica')
  const internalPort = broker.environment?.INTERNAL_PORT
  t.ok(internalPort !== undefined, 'the internal API has a port of its own')
  t.same(hostPorts(broker, internalPort ?? ''), [], 'which is not published')
  t.ok(broker.expose?.includes(internalPort ?? ''), 'but exposed on the compose network')
  t.notOk(mountedSecrets(broker).some(s => s.startsWith('demo_')), 'no demo secret')

  const example = read('.env.example')
  const set = Object.fromEntries([...example.matchAll(/^([A-Z][A-Z0-9_]*)=(.*)$/gm)].map(m => [m[1], m[2]]))
  t.same(set.COMPOSE_FILE?.split(':'), ['docker-compose.yml', PRODUCTION_LAYER], '.env.example selects the production layer')
  const known = [...Object.keys(EnvSchema.properties), ...SECRET_VARIABLES.map(s => `${s}_FILE`), 'COMPOSE_FILE', 'SECRETS_DIR']
  const mentioned = [...example.matchAll(/^#?\s?([A-Z][A-Z0-9_]*)=/gm)].map(m => m[1])
  t.same(mentioned.filter(name => !known.includes(name)), [], '.env.example names only variables the broker or compose knows')
  t.same(SECRET_VARIABLES.filter(name => name !== 'REDIS_URL' && name in set), [], 'and sets no secret inline')

  // The operator's side, made here: .env.example filled in, and the files SECRETS_DIR must hold.
  const dir = mkdtempSync(join(tmpdir(), 'cybs-secrets-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', join(dir, 'key'), '-out', join(dir, 'cert'), '-days', '1', '-subj', '/CN=compose production test'], { stdio: 'pipe' })
  const contents: Record<string, string> = {
    CYBS_CLIENT_SECRET_FILE: `cs-${randomBytes(12).toString('hex')}\n`,
    CYBS_CLIENT_CERT_FILE: readFileSync(join(dir, 'cert'), 'utf8'),
    CYBS_CLIENT_KEY_FILE: readFileSync(join(dir, 'key'), 'utf8'),
    TOKEN_ENCRYPTION_KEYS_FILE: `k1:${randomBytes(32).toString('base64')}\n`,
    INTERNAL_API_KEYS_FILE: `portal:${randomBytes(24).toString('hex')}\n`
  }
  const declared = production.secrets ?? {}
  const env: Record<string, string> = { ...set, CYBS_CLIENT_ID: 'partner-app', ...broker.environment }
  for (const [name, secret] of fileVariables(t, 'production broker', broker, declared)) {
    const file = declared[secret]?.file ?? ''
    t.match(file, /^\$\{SECRETS_DIR(:\?[^}]*)?\}\/[^/]+$/, `${secret}: a file in SECRETS_DIR`)
    const path = join(dir, file.slice(file.indexOf('}/') + 2))
    writeFileSync(path, contents[name] ?? '')
    env[name] = path
  }
  t.same(Object.keys(contents).filter(name => !(name in env)), [], 'every file the broker needs is mounted')
  const config = loadConfig(env)
  t.equal(config.cybs.environment, set.CYBS_ENVIRONMENT, 'loadConfig accepts .env.example filled in with the mounted files')
  t.ok(config.cybs.tls.cert !== undefined && config.cybs.tls.key !== undefined, 'mutual TLS from the mounted files')
  t.same(config.redis, { mode: 'standalone', url: 'redis://redis:6379' }, 'the redis service')
})

t.test('the runtime stage outside Docker, with the demo environment: ready, HEALTHCHECK passes, a merchant onboards', async t => {
  const dir = await runtimeDir()
  t.notOk(existsSync(join(dir, 'node_modules', 'typescript')), 'no dev dependency installed (typescript)')
  t.notOk(existsSync(join(dir, 'node_modules', 'tap')), 'no dev dependency installed (tap)')
  t.ok(existsSync(join(dir, 'node_modules', 'fastify')), 'production dependencies installed')

  const { env, demoSecrets } = await composeEnv(t)
  const base = `http://127.0.0.1:${env.PORT}`
  const internalBase = `http://127.0.0.1:${env.INTERNAL_PORT}`
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
  const [bin, ...argv] = healthcheckCommand()
  const healthcheck = async (): Promise<Run> => await run(bin === 'node' ? process.execPath : bin, argv, { cwd: dir, env: { PATH: process.env.PATH ?? '', ...env }, timeoutMs: 10_000 })
  const check = await healthcheck()
  t.equal(check.code, 0, `the HEALTHCHECK passes while ready ${check.stderr}`)

  // The demo as a browser goes through it: connect, the simulator's Allow, the callback.
  const connect = await request(`${base}/oauth/connect`)
  await connect.body.dump()
  t.equal(connect.statusCode, 302, '/oauth/connect redirects to the consent page')
  const authorize = new URL(String(connect.headers.location))
  t.equal(`${authorize.origin}${authorize.pathname}`, env.CYBS_AUTHORIZE_URL, 'on CYBS_AUTHORIZE_URL')
  const cookie = [connect.headers['set-cookie'] ?? []].flat().map(c => c.split(';')[0]).join('; ')
  const allow = await request(env.CYBS_AUTHORIZE_URL, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ ...Object.fromEntries(authorize.searchParams), merchant_id: 'demo_merchant', decision: 'allow' }).toString()
  })
  await allow.body.dump()
  t.equal(allow.statusCode, 302, 'the simulator accepts the broker as its registered client')
  const callback = await request(String(allow.headers.location), { headers: { cookie } })
  await callback.body.dump()
  t.equal(callback.statusCode, 200, 'the callback stores the merchant')
  const bearer = `Bearer ${readFileSync(env.INTERNAL_API_KEYS_FILE, 'utf8').trim().split(':')[1]}`
  const lookup = await request(`${internalBase}/internal/v1/merchants/demo_merchant/access-token`, { headers: { authorization: bearer } })
  const token = await lookup.body.json() as { access_token?: string }
  t.equal(lookup.statusCode, 200, 'the demo caller gets an access token')
  const docs = await request(`${internalBase}/docs/json`, { headers: { authorization: bearer } })
  t.equal(docs.statusCode, 200, 'the OpenAPI document')
  await docs.body.dump()
  const hidden = await request(`${base}/internal/v1/merchants/demo_merchant/access-token`, { headers: { authorization: bearer } })
  await hidden.body.dump()
  t.equal(hidden.statusCode, 404, 'the internal API is not on the public port')

  proc.kill('SIGTERM')
  t.equal(await exited, 0, 'exits 0 on SIGTERM')
  t.notOk(output.includes('\u001b['), 'no colours: production logs are plain JSON')
  t.ok(output.split('\n').filter(l => l !== '').every(l => l.startsWith('{')), 'every output line is a JSON log line')
  t.same(leaked(output, [...demoSecrets, token.access_token ?? 'no token']), [], 'no secret in the output')

  t.not((await healthcheck()).code, 0, 'the HEALTHCHECK fails once the service is gone')
})

t.test('the runtime stage refuses a bad environment: exit 1, one line naming the variable, no secret', async t => {
  const dir = await runtimeDir()
  const { env, demoSecrets } = await composeEnv(t)
  const without = (...names: string[]): Record<string, string> => Object.fromEntries(Object.entries(env).filter(([k]) => !names.includes(k)))
  const shortApiSecret = randomBytes(10).toString('hex')
  const shortKey = randomBytes(18).toString('base64')
  const apiSecret = randomBytes(24).toString('hex')
  const cases: Array<{ what: string, variable: string, env: Record<string, string> }> = [
    { what: 'a missing required variable', variable: 'CYBS_CLIENT_ID', env: without('CYBS_CLIENT_ID') },
    { what: 'a malformed secret', variable: 'INTERNAL_API_KEYS', env: { ...without('INTERNAL_API_KEYS_FILE'), INTERNAL_API_KEYS: `payments:${shortApiSecret}` } },
    { what: 'a malformed encryption key', variable: 'TOKEN_ENCRYPTION_KEYS', env: { ...without('TOKEN_ENCRYPTION_KEYS_FILE'), TOKEN_ENCRYPTION_KEYS: `k1:${shortKey}` } },
    { what: 'a secret file that is not there', variable: 'CYBS_CLIENT_SECRET_FILE', env: { ...env, CYBS_CLIENT_SECRET_FILE: join(dir, 'no-such-secret') } },
    { what: 'a secret given both ways', variable: 'INTERNAL_API_KEYS', env: { ...env, INTERNAL_API_KEYS: `payments:${apiSecret}` } }
  ]
  for (const c of cases) {
    const res = await run(process.execPath, ['dist/src/server.js'], { cwd: dir, env: { PATH: process.env.PATH ?? '', ...c.env }, timeoutMs: 20_000 })
    t.equal(res.code, 1, `${c.what}: exit status 1`)
    const lines = res.stderr.split('\n').filter(l => l !== '')
    t.equal(lines.length, 1, `${c.what}: one line on stderr (${res.stderr.trim()})`)
    t.match(lines[0], new RegExp(`\\b${c.variable}:`), `${c.what}: the line names ${c.variable}`)
    t.equal(res.stdout, '', `${c.what}: nothing on stdout`)
    t.same(leaked(res.stdout + res.stderr, [...demoSecrets, shortApiSecret, shortKey, apiSecret]), [], `${c.what}: no secret value in the output`)
  }
})
