// Shared by the fault and soak tests: an admin Redis connection and a store reading the records
// as the service wrote them, bounded requests, the onboarding split into its steps, the check
// that a merchant's stored refresh token is the live one at the simulator, and a private build
// of the service for tests that run it as a child process.
import type { Test } from 'tap'
import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { cookiesOf, type Built } from '../helper.js'
import { createKeyRing } from '../../src/key-ring.js'
import { createRedisKeys, type RedisKeys } from '../../src/redis-keys.js'
import { createTokenStore, type MerchantRecord, type TokenStore } from '../../src/token-store.js'
import type { Simulator } from '../../src/simulator/app.js'

export const ROOT = fileURLToPath(new URL('../..', import.meta.url))

/** Onboardings are many here: the browser routes' rate limit must not be what answers. */
export const NO_RATE_LIMIT = { RATE_LIMIT_MAX: '1000000', STATE_MAX_PER_CLIENT: '1000000', STATE_MAX_TOTAL: '100000000' }

export interface Res { statusCode: number, body: string, json: () => any }

export const errorCode = (res: Res): unknown => {
  try {
    return (res.json() as { error?: { code?: unknown } }).error?.code
  } catch {
    return undefined
  }
}

/** The <title> of an HTML page (the browser routes' pages are told apart by it). */
export const pageTitle = (body: string): string | undefined => /<title>([^<]*)<\/title>/.exec(body)?.[1]

/** `p`, or a rejection naming `what` after `ms` (a guard against a hung request, not a timing goal). */
export async function guarded<T> (p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([p, new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)
    })])
  } finally {
    clearTimeout(timer)
  }
}

/** A request and how long it took. */
export async function timed<T> (p: Promise<T>): Promise<{ res: T, ms: number }> {
  const started = performance.now()
  const res = await p
  return { res, ms: performance.now() - started }
}

/** A short digest, so that assertions can compare tokens without ever printing one. */
export const digest = (token: string): string => createHash('sha256').update(token).digest('base64url').slice(0, 16)

/** What a record's assertions compare: its metadata, and digests in place of its tokens. */
export function fingerprint (r: MerchantRecord | undefined): Record<string, unknown> | undefined {
  if (r === undefined) return undefined
  const { accessToken, refreshToken, ...meta } = r
  return { ...meta, accessToken: digest(accessToken), refreshToken: digest(refreshToken) }
}

export interface Admin {
  redis: Redis
  store: TokenStore
  keys: RedisKeys
  /** The stored record; throws when there is none. */
  stored: (mid: string) => Promise<MerchantRecord>
}

/** A connection of the test's own to the service's Redis, and a store over it with the service's keys. */
export function admin (t: Test, b: Built): Admin {
  const redis = new Redis(b.redis.url, { maxRetriesPerRequest: 1, enableOfflineQueue: true })
  redis.on('error', () => {})
  t.teardown(() => redis.disconnect())
  const keys = createRedisKeys(b.config.redisKeyPrefix)
  const store = createTokenStore(redis, createKeyRing(b.config.encryptionKeys), keys)
  return {
    redis,
    store,
    keys,
    async stored (mid) {
      const r = await store.get(mid)
      if (r === undefined) throw new Error(`${mid} is not stored`)
      return r
    }
  }
}

export const lookup = async (b: Built, mid: string): Promise<Res> =>
  await b.app.inject({ url: `/internal/v1/merchants/${mid}/access-token`, headers: b.auth })
export const merchantStatus = async (b: Built, mid: string): Promise<Res> =>
  await b.app.inject({ url: `/internal/v1/merchants/${mid}`, headers: b.auth })
export const forceRefresh = async (b: Built, mid: string): Promise<Res> =>
  await b.app.inject({ method: 'POST', url: `/internal/v1/merchants/${mid}/refresh`, headers: b.auth })
export const deleteMerchant = async (b: Built, mid: string): Promise<Res> =>
  await b.app.inject({ method: 'DELETE', url: `/internal/v1/merchants/${mid}`, headers: b.auth })

/** The binding cookie of the browser that started each state. */
const browsers = new Map<string, string>()

/** GET /oauth/connect: the state of a fresh onboarding (its browser's cookie is kept for the callback). */
export async function connectState (b: Built, query = ''): Promise<string> {
  const res = await b.app.inject({ url: `/oauth/connect${query}` })
  if (res.statusCode !== 302) throw new Error(`connect answered ${res.statusCode}`)
  const state = new URL(String(res.headers.location)).searchParams.get('state') ?? ''
  browsers.set(state, cookiesOf(res.headers))
  return state
}

/** The callback from the browser that started the state (or from one with `cookie`: '' for none). */
export async function callback (b: Built, code: string, state: string, cookie = browsers.get(state)): Promise<Res> {
  return await b.app.inject({ url: `/oauth/callback?code=${encodeURIComponent(code)}&state=${encodeURIComponent(state)}`, headers: cookie === undefined || cookie === '' ? {} : { cookie } })
}

export const tokenRequests = (sim: Simulator, grant: 'authorization_code' | 'refresh_token'): number =>
  sim.control.requests().filter(r => r.form.grant_type === grant).length

/** Polls until the simulator has received `n` token requests of the grant (false after timeoutMs). */
export async function simReceived (sim: Simulator, grant: 'authorization_code' | 'refresh_token', n: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (tokenRequests(sim, grant) < n) {
    if (Date.now() > deadline) return false
    await sleep(10)
  }
  return true
}

/** Polls GET url until it answers `status` (or timeoutMs passed); the last answer. */
export async function pollStatus (b: Built, url: string, status: number, timeoutMs: number, headers: Record<string, string> = {}): Promise<Res> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const res = await b.app.inject({ url, headers })
    if (res.statusCode === status || Date.now() > deadline) return res
    await sleep(100)
  }
}

/**
 * The merchant is connected and its stored refresh token is the live one at the simulator (which
 * rotates them): a forced refresh answers 200 and sent exactly that token.
 */
export async function assertRefreshTokenAlive (t: Test, b: Built, a: Admin, mid: string): Promise<void> {
  const rec = await a.store.get(mid)
  if (rec === undefined) {
    t.fail(`${mid}: no stored record`)
    return
  }
  t.equal(rec.status, 'connected', `${mid}: stored as connected`)
  // Nothing else runs meanwhile: the simulator's last refresh request is this one's (its request
  // log is capped, so it is not counted).
  const before = b.sim.control.stats().refreshes
  const res = await guarded(forceRefresh(b, mid), 15_000, `forced refresh of ${mid}`)
  t.equal(res.statusCode, 200, `${mid}: a forced refresh works (got ${res.statusCode} ${String(errorCode(res) ?? '')})`)
  const last = b.sim.control.requests().filter(r => r.form.grant_type === 'refresh_token').at(-1)
  t.ok(b.sim.control.stats().refreshes > before && last?.form.refresh_token === rec.refreshToken, `${mid}: it sent the stored refresh token`)
}

let dist: string | undefined

/**
 * A private build of the service (tsconfig.build.json) in a temporary directory, made once per test
 * process: the shared dist/ may be stale or rebuilt by others meanwhile. Its node_modules is a link
 * to the project's.
 */
export function privateBuild (t: Test): string {
  if (dist !== undefined) return dist
  const dir = mkdtempSync(join(tmpdir(), 'cybs-faults-dist-'))
  const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
  const out = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.build.json', '--outDir', dir], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 })
  const server = join(dir, 'src', 'server.js')
  // Type errors elsewhere in a working tree still emit; only a missing server is fatal.
  if (!existsSync(server)) throw new Error(`the private build failed:\n${out.stdout}${out.stderr}`)
  if (out.status !== 0) t.comment(`tsc reported problems (the build was emitted):\n${out.stdout}`)
  writeFileSync(join(dir, 'package.json'), '{ "type": "module" }\n')
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir')
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  dist = dir
  return dir
}
