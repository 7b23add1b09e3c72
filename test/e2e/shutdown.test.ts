// Graceful shutdown of the real process (dist/src/server.js): SIGTERM while a forced refresh waits
// on a slow CyberSource. The in-flight request completes with 200, the refreshed tokens are
// stored, new connections are refused or answered 503 (never left hanging), and the process
// exits 0 within SHUTDOWN_GRACE_MS. A second process then serves the refreshed token.
import t, { type Test } from 'tap'
import { spawn, execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { Agent, request } from 'undici'
import { Redis } from 'ioredis'
import { envFor, secrets, startSimulator } from '../helper.js'
import { startRedis } from '../helpers/redis.js'
import { freePort } from '../../src/net-utils.js'
import { loadConfig } from '../../src/config.js'
import { createKeyRing } from '../../src/key-ring.js'
import { createRedisKeys } from '../../src/redis-keys.js'
import { createTokenStore, type MerchantRecord } from '../../src/token-store.js'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const SERVER = join(ROOT, 'dist', 'src', 'server.js')
const GRACE_MS = 10_000
const SLOW_REFRESH_MS = 2000
/** Only a guard against a hung request, not a performance assertion. */
const HANG_GUARD_MS = 3000

// npm test builds first (pretest); a bare `npx tap` on a fresh clone may not have.
if (!existsSync(SERVER)) execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'inherit' })

interface Child {
  base: string
  output: () => string
  /** Log lines (JSON) the process wrote to stdout so far. */
  logs: () => Array<Record<string, unknown>>
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
  exitCode: () => number | null
  kill: (signal: NodeJS.Signals) => void
}

async function startServer (t: Test, env: Record<string, string>): Promise<Child> {
  const port = await freePort()
  const base = `http://127.0.0.1:${port}`
  const proc = spawn(process.execPath, [SERVER], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', ...env, HOST: '127.0.0.1', PORT: String(port), PUBLIC_BASE_URL: base },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  proc.stdout.on('data', (c: Buffer) => { stdout += c.toString() })
  proc.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>(resolve => proc.once('exit', (code, signal) => resolve({ code, signal })))
  t.teardown(() => { if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL') })
  const child: Child = {
    base,
    output: () => stdout + stderr,
    logs: () => stdout.split('\n').filter(l => l.startsWith('{')).map(l => JSON.parse(l) as Record<string, unknown>),
    exited,
    exitCode: () => proc.exitCode,
    kill: (signal) => { proc.kill(signal) }
  }
  const deadline = Date.now() + 20_000
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`the server exited with ${proc.exitCode}:\n${child.output()}`)
    const status = await request(`${base}/health/ready`).then(async r => { await r.body.dump(); return r.statusCode }, () => 0)
    if (status === 200) return child
    if (Date.now() > deadline) throw new Error(`the server did not become ready:\n${child.output()}`)
    await sleep(100)
  }
}

async function guarded<T> (p: Promise<T>, what: string, ms = HANG_GUARD_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([p, new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms) })])
  } finally {
    clearTimeout(timer)
  }
}

t.test('SIGTERM during a slow forced refresh: the request completes, tokens are stored, exit 0', async t => {
  const redis = await startRedis(t)
  const s = secrets()
  const sim = await startSimulator(t, { clientSecret: s.clientSecret })
  // CYBS_TIMEOUT_MS above the simulator's delay: the slow refresh must succeed, not time out.
  const env = envFor(s, redis.url, sim.url, { SHUTDOWN_GRACE_MS: String(GRACE_MS), CYBS_TIMEOUT_MS: '10000' })
  const config = loadConfig(env)
  const admin = new Redis(redis.url, { maxRetriesPerRequest: 1 })
  admin.on('error', () => {})
  t.teardown(() => admin.disconnect())
  const store = createTokenStore(admin, createKeyRing(config.encryptionKeys), createRedisKeys(config.redisKeyPrefix))
  const stored = async (mid: string): Promise<MerchantRecord> => {
    const r = await store.get(mid)
    if (r === undefined) throw new Error(`${mid} is not stored`)
    return r
  }
  const auth = { authorization: `Bearer ${s.apiSecret}` }
  const mid = 'mid_shutdown'

  const child = await startServer(t, env)
  const agent = new Agent()
  t.teardown(async () => await agent.close())

  // Onboarding through the child's own HTTP endpoints.
  const connect = await request(`${child.base}/oauth/connect`, { dispatcher: agent })
  await connect.body.dump()
  t.equal(connect.statusCode, 302)
  const state = new URL(String(connect.headers.location)).searchParams.get('state') ?? ''
  t.ok(state.length >= 22, 'a state to carry back')
  const code = sim.control.issueCode(mid)
  const cookie = [connect.headers['set-cookie'] ?? []].flat().map(c => c.split(';')[0]).join('; ')
  const cb = await request(`${child.base}/oauth/callback?code=${encodeURIComponent(code)}&state=${encodeURIComponent(state)}`, { dispatcher: agent, headers: { cookie } })
  const cbBody = await cb.body.text()
  t.equal(cb.statusCode, 200, 'onboarded')
  t.match(cbBody, mid)
  const before = await stored(mid)

  // A forced refresh that CyberSource answers slowly; SIGTERM once the request reached it.
  sim.control.setBehavior({ delayMs: SLOW_REFRESH_MS, grantType: 'refresh_token' })
  const inflight = request(`${child.base}/internal/v1/merchants/${mid}/refresh`, { method: 'POST', headers: auth, dispatcher: agent })
    .then(async r => ({ statusCode: r.statusCode, body: await r.body.text() }), (err: Error & { code?: string }) => ({ statusCode: 0, body: `${err.name} ${err.code ?? ''} ${err.message}` }))
  const reached = Date.now() + 5000
  while (!sim.control.requests().some(r => r.form.grant_type === 'refresh_token') && Date.now() < reached) await sleep(10)
  t.ok(sim.control.requests().some(r => r.form.grant_type === 'refresh_token'), 'the refresh is in flight at CyberSource')
  child.kill('SIGTERM')

  // Once the process has taken the signal in, a new connection is refused or answered 503.
  const noticed = Date.now() + 5000
  while (!child.logs().some(l => l.msg === 'shutting down') && child.exitCode() === null && Date.now() < noticed) await sleep(10)
  t.ok(child.logs().some(l => l.msg === 'shutting down' && l.signal === 'SIGTERM'), 'the process logged the SIGTERM')
  const fresh = new Agent()
  try {
    const late = await guarded(request(`${child.base}/health/live`, { dispatcher: fresh, headersTimeout: HANG_GUARD_MS, bodyTimeout: HANG_GUARD_MS })
      .then(async r => ({ status: r.statusCode, error: undefined, body: await r.body.text() }), (err: Error & { code?: string }) => ({ status: 0, error: err.code ?? err.message, body: '' })), 'a new connection after SIGTERM')
    t.ok(late.error === 'ECONNREFUSED' || late.status === 503, `a new connection is refused or gets 503 (got ${late.status} ${late.error ?? ''} ${late.body})`)
  } finally {
    await fresh.destroy()
  }

  const res = await guarded(inflight, 'the in-flight refresh', SLOW_REFRESH_MS + GRACE_MS)
  t.equal(res.statusCode, 200, `the in-flight refresh completed: ${res.body}`)
  const body = JSON.parse(res.body) as Record<string, unknown>
  t.equal(body.merchant_id, mid)
  t.equal(body.status, 'connected')
  t.type(body.last_refreshed_at, 'string', 'refreshed')

  // close-with-grace exits 1 when SHUTDOWN_GRACE_MS passes first: code 0 means within the grace.
  const exit = await guarded(child.exited, 'process exit', GRACE_MS + 5000)
  t.same(exit, { code: 0, signal: null }, 'the process exited with code 0')

  const after = await stored(mid)
  t.equal(after.version, before.version + 1, 'the record version moved by one')
  t.not(after.accessToken, before.accessToken, 'a new access token is stored')
  t.equal(after.lastRefreshedAt === null ? undefined : new Date(after.lastRefreshedAt).toISOString(), body.last_refreshed_at)
  t.equal(sim.control.stats().refreshes, 1, 'CyberSource counted one refresh')

  // A new process serves the refreshed access token (no further refresh).
  sim.control.setBehavior({})
  const second = await startServer(t, env)
  const lookup = await request(`${second.base}/internal/v1/merchants/${mid}/access-token`, { headers: auth })
  const token = await lookup.body.json() as { access_token?: string }
  t.equal(lookup.statusCode, 200)
  t.equal(token.access_token, after.accessToken, 'the new access token is the one served')
  t.equal(sim.control.stats().refreshes, 1, 'served without another refresh')
  second.kill('SIGTERM')
  t.same(await guarded(second.exited, 'second process exit', GRACE_MS + 5000), { code: 0, signal: null }, 'an idle process exits 0 too')

  // Neither process wrote a secret or a token.
  const output = child.output() + second.output()
  const forbidden = { clientSecret: s.clientSecret, apiSecret: s.apiSecret, encryptionKey: s.encryptionKey, code, state, oldAccess: before.accessToken, newAccess: after.accessToken, refresh: after.refreshToken }
  t.same(Object.entries(forbidden).filter(([, v]) => output.includes(v)).map(([k]) => k), [], 'no secret, code, state or token in the output')
})
