// Key rotation (src/key-rotation.ts, src/rotate-keys.ts) against a private Redis: records under an
// old key are rewritten under the first key and nothing else is touched; a record changed between
// the read and the write is not overwritten; a run stops and resumes from its cursor; a record
// under an unknown key id is reported and makes the run incomplete; a busy lock is retried; every
// master of a Cluster is scanned; and the CLI, built into a private directory, prints a summary
// without a token or key and exits 0 only when nothing is left under an old key.
import t from 'tap'
import { spawn, execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { startRedis } from '../helpers/redis.js'
import { startCluster } from '../helpers/redis-topologies.js'
import { build, envFor, onboard as buildOnboard, secrets, until } from '../helper.js'
import { createRedisClient, waitReady, type RedisClient } from '../../src/redis-client.js'
import { createRedisKeys, type RedisKeys } from '../../src/redis-keys.js'
import { createKeyRing } from '../../src/key-ring.js'
import type { EncryptionKey } from '../../src/config.js'
import { createTokenStore, type NewRecord, type TokenStore } from '../../src/token-store.js'
import { createRefreshLock, type RefreshLock } from '../../src/refresh-lock.js'
import { createKeyRotation, formatCursor, parseCursor, MAX_PASSES, type KeyRotation, type Progress } from '../../src/key-rotation.js'
import { fakeToken, newRecord } from '../helpers/records.js'
import { kidOf } from '../../src/record-codec.js'

type Tap = Parameters<Parameters<typeof t.test>[0]>[0]

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const key = (kid: string): EncryptionKey => ({ kid, key: randomBytes(32) })
const OLD = key('old')
const NEW = key('new')
const GONE = key('gone')

interface Ctx {
  redis: RedisClient
  keys: RedisKeys
  /** Stores as replicas with these key lists would have them. */
  oldStore: TokenStore
  newStore: TokenStore
  /** The rotation with `new,old`. */
  rotation: (store?: TokenStore) => KeyRotation
  /** The key id of the merchant's tokens, as stored. */
  kid: (merchantId: string) => Promise<string>
  version: (merchantId: string) => Promise<number>
  written: Map<string, NewRecord>
  /** The standalone server's URL ('' on Cluster). */
  url: string
}

function context (redis: RedisClient, prefix: string, url = ''): Ctx {
  const keys = createRedisKeys(prefix)
  const ring = createKeyRing([NEW, OLD])
  const newStore = createTokenStore(redis, ring, keys)
  return {
    redis,
    keys,
    oldStore: createTokenStore(redis, createKeyRing([OLD]), keys),
    newStore,
    rotation: (store = newStore) => createKeyRotation({ redis, keys, keyRing: ring, targetKid: 'new', store }),
    kid: async (m) => {
      const blob = await redis.getBuffer(keys.merchantTokens(m))
      return blob === null ? '(none)' : kidOf(blob)
    },
    version: async (m) => Number(await redis.hget(keys.merchant(m), 'version')),
    written: new Map(),
    url
  }
}

async function setup (t: Tap, prefix = 'kr:'): Promise<Ctx> {
  const server = await startRedis(t)
  const redis = createRedisClient({ mode: 'standalone', url: server.url })
  redis.on('error', () => {})
  t.teardown(() => { redis.disconnect() })
  if (!await waitReady(redis, 5000)) throw new Error('redis did not become ready')
  return context(redis, prefix, server.url)
}

const token = fakeToken
const record = newRecord

/** Writes a record (a new onboarding) with `store` and remembers it. */
async function onboard (ctx: Ctx, store: TokenStore, merchantId: string, overrides: Partial<NewRecord> = {}): Promise<NewRecord> {
  const r = record(merchantId, overrides)
  if (await store.put(r) === undefined) throw new Error(`${merchantId} not written`)
  ctx.written.set(merchantId, r)
  return r
}

t.test('cursor text round trip', async t => {
  t.same(parseCursor(formatCursor({ node: 2, scan: '123456' })), { node: 2, scan: '123456' })
  for (const bad of ['', '0', ':1', '1:', 'a:1', '1:2:3', '0:-1', `0:${'9'.repeat(21)}`]) t.equal(parseCursor(bad), undefined, `"${bad}" is not a cursor`)
})

t.test('records under an old key are rotated; the others are untouched; a second run does nothing', async t => {
  const ctx = await setup(t)
  const THIRD = key('third')
  const ring = createKeyRing([NEW, OLD, THIRD])
  const rotation = createKeyRotation({ redis: ctx.redis, keys: ctx.keys, keyRing: ring, targetKid: 'new', store: createTokenStore(ctx.redis, ring, ctx.keys) })
  const olds = ['m_o1', 'm_o2', 'm_o3', 'm_o4']
  for (const m of olds) await onboard(ctx, ctx.oldStore, m, m === 'm_o2' ? { lastRefreshedAt: Date.now() - 5000 } : {})
  await onboard(ctx, createTokenStore(ctx.redis, createKeyRing([THIRD]), ctx.keys), 'm_third')
  for (const m of ['m_n1', 'm_n2']) await onboard(ctx, ctx.newStore, m)
  // m_o4 waits for a new onboarding: the rotation keeps its status.
  const o4 = await ctx.oldStore.getMeta('m_o4')
  if (o4 === undefined) throw new Error('m_o4 not stored')
  t.equal(await ctx.oldStore.markReauthorizationRequired('m_o4', o4), 2)
  // A record of another deployment sharing the Redis (another prefix), under old.
  const foreign = context(ctx.redis, 'other:')
  await onboard(foreign, foreign.oldStore, 'm_o1')

  const rotated = [...olds, 'm_third']
  const before = new Map<string, { meta: unknown, expireAt: number }>()
  for (const m of [...rotated, 'm_n1', 'm_n2']) {
    before.set(m, { meta: await ctx.oldStore.getMeta(m), expireAt: Number(await ctx.redis.call('PEXPIRETIME', ctx.keys.merchant(m))) })
  }

  const s = await rotation.run()
  t.match(s, { complete: true, scanned: 7, rotated: 5, current: 2, failed: [], conflicts: 0, busyRetried: 0, passes: 2, cursor: null, targetKid: 'new' })
  t.equal(s.stopped, undefined)
  const onlyNew = createTokenStore(ctx.redis, createKeyRing([NEW]), ctx.keys)
  for (const m of rotated) {
    t.equal(await ctx.kid(m), 'new', `${m}: under new`)
    const was = before.get(m)?.meta as { version: number }
    const now = await onlyNew.getMeta(m)
    t.same(now, { ...was, version: was.version + 1 }, `${m}: one compare-and-set write, metadata, status and grant kept`)
    t.equal(Number(await ctx.redis.call('PEXPIRETIME', ctx.keys.merchant(m))), before.get(m)?.expireAt, `${m}: same expiry`)
    const got = await onlyNew.get(m)
    t.ok(got?.accessToken === ctx.written.get(m)?.accessToken && got?.refreshToken === ctx.written.get(m)?.refreshToken, `${m}: the same tokens, read with the new key alone`)
  }
  t.equal((await onlyNew.getMeta('m_o4'))?.status, 'reauthorization_required')
  for (const m of ['m_n1', 'm_n2']) t.same(await ctx.oldStore.getMeta(m), before.get(m)?.meta, `${m}: already under new, not written`)
  t.equal(await foreign.kid('m_o1'), 'old', 'another prefix is not touched')
  t.equal(await foreign.version('m_o1'), 1)
  t.equal(await ctx.redis.exists(...[...rotated, 'm_n1'].map(m => ctx.keys.lock(m))), 0, 'every lock released')

  const again = await rotation.run()
  t.match(again, { complete: true, scanned: 7, rotated: 0, current: 7, passes: 1, failed: [] }, 'a second run: nothing to do')
  for (const m of rotated) t.equal(await ctx.version(m), (before.get(m)?.meta as { version: number }).version + 1, `${m}: not written again`)
})

t.test('a record written between the read and the write is not overwritten', async t => {
  for (const writer of ['new', 'old'] as const) {
    await t.test(`the concurrent write comes from a replica whose first key is ${writer}`, async t => {
      const ctx = await setup(t)
      await onboard(ctx, ctx.oldStore, 'm_cas')
      await onboard(ctx, ctx.oldStore, 'm_quiet')
      let concurrent: NewRecord | undefined
      // The rotation's store: after its read of m_cas, a new onboarding lands (once).
      const racing: TokenStore = {
        ...ctx.newStore,
        get: async (m) => {
          const r = await ctx.newStore.get(m)
          if (m === 'm_cas' && concurrent === undefined) concurrent = await onboard(ctx, writer === 'new' ? ctx.newStore : ctx.oldStore, 'm_cas')
          return r
        }
      }
      const s = await ctx.rotation(racing).run()
      t.ok(concurrent !== undefined, 'the concurrent onboarding happened')
      t.equal(s.conflicts, 1, 'the rotation lost one write')
      t.match(s, { complete: true, failed: [] })
      t.equal(s.rotated, writer === 'new' ? 1 : 2, writer === 'new' ? 'the newer record, under new already, is left as is' : 'the newer record, under old, is rotated on the re-check')
      const now = await createTokenStore(ctx.redis, createKeyRing([NEW]), ctx.keys).get('m_cas')
      t.ok(now?.accessToken === concurrent?.accessToken && now?.refreshToken === concurrent?.refreshToken, 'the concurrent tokens are kept')
      t.equal(now?.version, writer === 'new' ? 2 : 3)
      t.equal(await ctx.kid('m_quiet'), 'new')
    })
  }
})

t.test('a record a refresh moved to the new key while the rotation waited for the lock is not written again', async t => {
  const ctx = await setup(t)
  await onboard(ctx, ctx.oldStore, 'm_moved')
  const lock = createRefreshLock({ redis: ctx.redis, keys: ctx.keys })
  let refreshed: NewRecord | undefined
  // Just before the rotation takes the lock, a replica with new first refreshes the merchant.
  const racing: RefreshLock = {
    ...lock,
    acquire: async (m) => {
      const r = await ctx.newStore.get(m)
      if (r !== undefined && refreshed === undefined) {
        refreshed = { ...r, accessToken: token('at'), lastRefreshedAt: Date.now() }
        await ctx.newStore.put(refreshed, r)
      }
      return await lock.acquire(m)
    }
  }
  const s = await createKeyRotation({ redis: ctx.redis, keys: ctx.keys, keyRing: createKeyRing([NEW, OLD]), targetKid: 'new', lock: racing }).run()
  t.ok(refreshed !== undefined, 'the refresh happened')
  t.match(s, { complete: true, rotated: 0, current: 1, conflicts: 0 }, 'checked again under the lock: already current')
  t.equal(await ctx.version('m_moved'), 2, 'onboarding and refresh only')
  t.ok((await ctx.newStore.get('m_moved'))?.accessToken === refreshed?.accessToken, 'the refreshed token is kept')
})

t.test('a run stops after a page or on a signal and resumes from its cursor; each record is written once', async t => {
  const ctx = await setup(t)
  const N = 600
  for (let i = 0; i < N; i += 50) {
    await Promise.all(Array.from({ length: 50 }, async (_, j) => await onboard(ctx, ctx.oldStore, `m_${i + j}`)))
  }
  const first = await ctx.rotation().run({ maxPages: 1 })
  t.equal(first.stopped, 'max_pages')
  t.equal(first.complete, false)
  t.ok(first.cursor !== null, 'a cursor to resume from')
  t.ok(first.rotated > 0 && first.rotated < N, `a page rotated some (${first.rotated})`)
  t.equal(first.passes, 1)

  const stop = new AbortController()
  const pages: Progress[] = []
  const second = await ctx.rotation().run({
    cursor: first.cursor ?? undefined,
    signal: stop.signal,
    onProgress: p => { pages.push(p); stop.abort() }
  })
  t.equal(second.stopped, 'interrupted')
  t.ok(second.cursor !== null && pages.length === 1, 'stopped after the page under way')
  t.ok(second.rotated > 0, `the resumed run rotated more (${second.rotated})`)
  t.same(second.cursor, pages[0].cursor, 'the cursor is the one reported after that page')

  const third = await ctx.rotation().run({ cursor: second.cursor ?? undefined })
  t.match(third, { complete: true, failed: [], passes: 2 }, 'the rest, then a check from the start')
  t.equal(first.rotated + second.rotated + third.rotated, N, 'every record rotated once across the three runs')
  const versions = await Promise.all(Array.from({ length: N }, async (_, i) => await ctx.version(`m_${i}`)))
  t.same(versions.filter(v => v !== 2), [], 'no record was written twice (onboarding, then one rotation)')
  for (const i of [0, 299, 599]) t.equal(await ctx.kid(`m_${i}`), 'new')
})

t.test('a record under an unknown key id is reported, skipped and makes the run incomplete', async t => {
  const ctx = await setup(t)
  await onboard(ctx, createTokenStore(ctx.redis, createKeyRing([GONE]), ctx.keys), 'm_lost')
  // Same key id as a configured key, other key material.
  await onboard(ctx, createTokenStore(ctx.redis, createKeyRing([{ kid: 'old', key: randomBytes(32) }]), ctx.keys), 'm_forged')
  for (const m of ['m_a', 'm_b', 'm_c']) await onboard(ctx, ctx.oldStore, m)

  const s = await ctx.rotation().run()
  t.equal(s.complete, false)
  t.equal(s.rotated, 3, 'the others are rotated')
  t.same(s.failed.sort((x, y) => x.merchantId < y.merchantId ? -1 : 1), [
    { merchantId: 'm_forged', reason: 'undecryptable' },
    { merchantId: 'm_lost', reason: 'unknown_key_id', detail: 'gone' }
  ])
  t.equal(s.passes, 2, 'a second pass confirms, a third could not change anything')
  t.equal(await ctx.kid('m_lost'), 'gone', 'left as it is')
  t.equal(await ctx.version('m_lost'), 1)
  t.equal(await ctx.redis.exists(ctx.keys.lock('m_lost')), 0, 'its lock released')
})

t.test('a merchant whose refresh lock is busy is retried once it is free', async t => {
  const ctx = await setup(t)
  for (const m of ['m_busy', 'm_free']) await onboard(ctx, ctx.oldStore, m)
  const holder = createRefreshLock({ redis: ctx.redis, keys: ctx.keys, ttlMs: 60_000 })
  const held = await holder.acquire('m_busy')
  if (held === undefined) throw new Error('lock not taken')
  let whileHeld: Promise<[Buffer | null, string | null]> | undefined
  let released: Promise<void> | undefined
  const s = await ctx.rotation().run({
    onProgress: p => {
      if (p.pending > 0 && released === undefined) {
        // Same connection, so this read happens before the release.
        whileHeld = Promise.all([ctx.redis.getBuffer(ctx.keys.merchantTokens('m_busy')), ctx.redis.hget(ctx.keys.merchant('m_busy'), 'version')])
        released = holder.release(held)
      }
    }
  })
  t.ok(released !== undefined, 'the busy merchant was set aside')
  const [blob, version] = await whileHeld ?? []
  t.ok(blob !== null && blob !== undefined && kidOf(blob) === 'old' && version === '1', 'not written while the lock was held')
  t.match(s, { complete: true, rotated: 2, busyRetried: 1, failed: [] })
  t.equal(await ctx.kid('m_busy'), 'new', 'rotated once the lock was free')
})

t.test('a lock that stays busy: reported, the record untouched, the run incomplete', async t => {
  const ctx = await setup(t)
  await onboard(ctx, ctx.oldStore, 'm_stuck')
  const holder = createRefreshLock({ redis: ctx.redis, keys: ctx.keys, ttlMs: 60_000 })
  if (await holder.acquire('m_stuck') === undefined) throw new Error('lock not taken')
  const s = await ctx.rotation().run({ busyTimeoutMs: 600 })
  t.match(s, { complete: false, rotated: 0, failed: [{ merchantId: 'm_stuck', reason: 'busy' }] })
  t.equal(s.passes, MAX_PASSES, 'retried in every pass, then given up')
  t.equal(await ctx.kid('m_stuck'), 'old')
})

t.test('a dry run counts and writes nothing', async t => {
  const ctx = await setup(t)
  for (const m of ['m_o1', 'm_o2', 'm_o3']) await onboard(ctx, ctx.oldStore, m)
  for (const m of ['m_n1', 'm_n2']) await onboard(ctx, ctx.newStore, m)
  await onboard(ctx, createTokenStore(ctx.redis, createKeyRing([GONE]), ctx.keys), 'm_lost')
  const s = await ctx.rotation().run({ dryRun: true })
  t.match(s, { dryRun: true, complete: false, scanned: 6, stale: 3, current: 2, rotated: 0, passes: 1, failed: [{ merchantId: 'm_lost', reason: 'unknown_key_id', detail: 'gone' }] })
  for (const m of ['m_o1', 'm_o2', 'm_o3', 'm_lost']) t.equal(await ctx.version(m), 1, `${m} not written`)
  t.equal(await ctx.redis.exists(...['m_o1', 'm_o2', 'm_o3'].map(m => ctx.keys.lock(m))), 0, 'no lock taken')
  await ctx.redis.del(ctx.keys.merchant('m_lost'))
  t.match(await ctx.rotation().run(), { complete: true, rotated: 3 })
  // Before removing old: a dry run with the new key alone finds nothing it cannot read.
  const onlyNew = createKeyRing([NEW])
  const check = createKeyRotation({ redis: ctx.redis, keys: ctx.keys, keyRing: onlyNew, targetKid: 'new', store: createTokenStore(ctx.redis, onlyNew, ctx.keys) })
  t.match(await check.run({ dryRun: true }), { complete: true, stale: 0, current: 5, failed: [] })
})

t.test('Redis Cluster: every master is scanned, and a cursor names the master', async t => {
  const cluster = await startCluster(t, 3)
  const redis = createRedisClient({ mode: 'cluster', nodes: cluster.spec.split(',').map(hp => ({ host: '127.0.0.1', port: Number(hp.split(':')[1]) })) })
  redis.on('error', () => {})
  t.teardown(() => { redis.disconnect() })
  if (!await waitReady(redis, 10_000)) throw new Error('cluster client not ready')
  const ctx = context(redis, 'kr:')
  const N = 60
  for (let i = 0; i < N; i++) await onboard(ctx, ctx.oldStore, `m_${i}`)
  const perNode = await Promise.all(cluster.clients.map(async c => (await c.call('DBSIZE')) as number))
  t.ok(perNode.every(n => n > 0), `records on every master (${perNode.join(', ')})`)

  t.equal(await ctx.rotation().count(), N, 'count sees every master')
  const first = await ctx.rotation().run({ maxPages: 1 })
  t.equal(first.stopped, 'max_pages')
  t.same(first.cursor, { node: 1, scan: '0' }, 'one page is one master here (fewer keys than a page)')
  const rest = await ctx.rotation().run({ cursor: first.cursor ?? undefined })
  t.match(rest, { complete: true, failed: [] })
  t.equal(first.rotated + rest.rotated, N)
  const versions = await Promise.all(Array.from({ length: N }, async (_, i) => await ctx.version(`m_${i}`)))
  t.same(versions.filter(v => v !== 2), [], 'each record written once by the rotation')
  const onlyNew = createTokenStore(redis, createKeyRing([NEW]), ctx.keys)
  t.ok((await onlyNew.get('m_7'))?.refreshToken === ctx.written.get('m_7')?.refreshToken, 'readable with the new key alone')
})

t.test('a forced refresh that waited for the rotation\'s lock still refreshes', async t => {
  const NEW_B64 = NEW.key.toString('base64')
  const b = await build(t, { env: { TOKEN_ENCRYPTION_KEYS: `new:${NEW_B64},old:${OLD.key.toString('base64')}` } })
  t.equal((await buildOnboard(b, 'm_race', '?merchant_id=m_race')).statusCode, 200)
  const keys = b.app.redisKeys
  // The record as a replica with old first would have written it.
  const onboarded = await b.app.tokenStore.get('m_race')
  if (onboarded === undefined) throw new Error('m_race not stored')
  t.ok(await createTokenStore(b.app.redis, createKeyRing([OLD]), keys).put(onboarded, onboarded) !== undefined, 'rewritten under old')
  const admin = createRedisClient({ mode: 'standalone', url: b.redis.url })
  admin.on('error', () => {})
  t.teardown(() => { admin.disconnect() })
  await waitReady(admin, 5000)
  const existsCalls = async (): Promise<number> => Number(/cmdstat_exists:calls=(\d+)/.exec(String(await admin.info('commandstats')))?.[1] ?? 0)

  // The rotation takes the lock, then waits at its read until the forced refresh waits for the lock.
  let open: () => void = () => {}
  const gate = new Promise<void>(resolve => { open = resolve })
  const store = b.app.tokenStore
  const gated: TokenStore = { ...store, get: async (m) => { await gate; return await store.get(m) } }
  const ring = createKeyRing(b.config.encryptionKeys)
  const rotating = createKeyRotation({ redis: b.app.redis, keys, keyRing: ring, targetKid: 'new', store: gated }).run()
  t.ok(await until(async () => await admin.exists(keys.lock('m_race')) === 1, 5000), 'the rotation holds the lock')
  const before = await existsCalls()
  const refreshing = b.app.inject({ method: 'POST', url: '/internal/v1/merchants/m_race/refresh', headers: b.auth })
  // The token service checks the lock with EXISTS only while it waits for the holder.
  t.ok(await until(async () => await existsCalls() > before, 5000), 'the forced refresh waits for the lock')
  open()
  const [summary, res] = await Promise.all([rotating, refreshing])
  t.match(summary, { rotated: 1, complete: true })
  t.equal(res.statusCode, 200)
  t.equal(b.sim.control.stats().refreshes, 1, 'CyberSource was asked for new tokens: the rotation\'s write is not a refresh')
  const now = await store.get('m_race')
  t.ok(now !== undefined && now.accessToken !== onboarded.accessToken, 'a new access token is stored')
})

// ---------------------------------------------------------------------------------------------
// The CLI, compiled into a private directory (not the shared dist/) and run as a process.

function buildCli (t: Tap): string {
  const dir = mkdtempSync(join(tmpdir(), 'rotate-keys-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({
    extends: join(ROOT, 'tsconfig.build.json'),
    // Type checking is tap's and the typecheck script's job; this only emits.
    compilerOptions: { rootDir: ROOT, outDir: dir, sourceMap: false, noCheck: true },
    include: [],
    files: [join(ROOT, 'src', 'rotate-keys.ts')]
  }))
  writeFileSync(join(dir, 'package.json'), '{ "type": "module" }\n')
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'))
  execFileSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(dir, 'tsconfig.json')], { stdio: 'pipe' })
  return join(dir, 'src', 'rotate-keys.js')
}

interface Run { code: number | null, stdout: string, stderr: string }

function runCli (t: Tap, cli: string, env: Record<string, string>, args: string[] = [], onStderr?: (text: string, signal: (s: NodeJS.Signals) => void) => void): Promise<Run> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [cli, ...args], { env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    const guard = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`rotate-keys did not finish:\n${stderr}`)) }, 60_000)
    t.teardown(() => { if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL') })
    proc.stdout.on('data', (c: Buffer) => { stdout += c.toString() })
    proc.stderr.on('data', (c: Buffer) => {
      stderr += c.toString()
      onStderr?.(stderr, s => proc.kill(s))
    })
    proc.once('error', reject)
    proc.once('close', code => { clearTimeout(guard); resolve({ code, stdout, stderr }) })
  })
}

t.test('npm run rotate-keys: from a built copy, with the environment of the service', async t => {
  const cli = buildCli(t)
  const ctx = await setup(t, 'cybs:')
  const s = secrets()
  const b64 = (k: EncryptionKey): string => k.key.toString('base64')
  const env = envFor(s, ctx.url, 'http://127.0.0.1:9', {
    TOKEN_ENCRYPTION_KEYS: `new:${b64(NEW)},old:${b64(OLD)}`
  })
  const outputs: string[] = []
  const run = async (args: string[] = [], extra: Record<string, string> = {}, onStderr?: Parameters<typeof runCli>[4]): Promise<Run> => {
    const r = await runCli(t, cli, { ...env, ...extra }, args, onStderr)
    outputs.push(r.stdout, r.stderr)
    return r
  }

  await t.test('a configuration error: one line per problem, exit 1', async t => {
    const r = await run([], { TOKEN_ENCRYPTION_KEYS: 'new:short', CYBS_CLIENT_ID: '' })
    t.equal(r.code, 1)
    t.match(r.stderr, /^configuration error: TOKEN_ENCRYPTION_KEYS: key "new" must be 32 bytes/m)
    t.match(r.stderr, /^configuration error: CYBS_CLIENT_ID: /m)
    t.equal(r.stdout, '')
  })

  await t.test('a usage error: exit 1', async t => {
    const r = await run(['--cursor', 'nonsense'])
    t.equal(r.code, 1)
    t.match(r.stderr, /--cursor: expected <node>:<cursor>/)
  })

  await t.test('records left under an unknown key id: summary, exit 2; then exit 0 once it is gone', async t => {
    for (let i = 0; i < 25; i++) await onboard(ctx, ctx.oldStore, `m_o${i}`)
    for (let i = 0; i < 5; i++) await onboard(ctx, ctx.newStore, `m_n${i}`)
    await onboard(ctx, createTokenStore(ctx.redis, createKeyRing([GONE]), ctx.keys), 'm_lost')
    const dry = await run(['--dry-run'])
    t.equal(dry.code, 2, 'dry run: records under an old key')
    t.match(dry.stdout, /under an old key \(would rotate\)\s+25\n/)
    t.equal(await ctx.version('m_o0'), 1, 'the dry run wrote nothing')

    const r = await run()
    t.equal(r.code, 2)
    t.match(r.stderr, /target key id "new" \(configured: new, old\)/)
    t.match(r.stderr, /pass 1: scanned \d+, rotated \d+, waiting 0, failed \d+; cursor /, 'plain progress lines off a terminal')
    t.match(r.stdout, /records scanned \(first pass\)\s+31\n/)
    t.match(r.stdout, /already under the target key\s+5\n/)
    t.match(r.stdout, /\n {2}rotated\s+25\n/)
    t.match(r.stdout, /failed\s+1\n\s+1 its key id is not in TOKEN_ENCRYPTION_KEYS \(gone\): m_lost\n/)
    t.match(r.stdout, /result: 1 record\(s\) are still under an old key/)
    t.equal(await ctx.kid('m_o3'), 'new')

    await ctx.redis.del(ctx.keys.merchant('m_lost'))
    const again = await run()
    t.equal(again.code, 0, 'nothing left under an old key')
    t.match(again.stdout, /\n {2}rotated\s+0\n/)
    t.match(again.stdout, /result: every record is under key id "new"/)
    const onlyNew = await run(['--dry-run'], { TOKEN_ENCRYPTION_KEYS: `new:${b64(NEW)}` })
    t.equal(onlyNew.code, 0, 'a dry run with the new key alone: the old key can go')
  })

  await t.test('--max-pages stops with a cursor; --cursor resumes', async t => {
    for (let i = 0; i < 450; i += 50) await Promise.all(Array.from({ length: 50 }, async (_, j) => await onboard(ctx, ctx.oldStore, `m_p${i + j}`)))
    const r = await run(['--max-pages', '1'])
    t.equal(r.code, 3)
    const cursor = /--cursor (\d+:\d+)/.exec(r.stdout)?.[1]
    t.ok(cursor !== undefined && cursor !== '0:0', 'the cursor to resume from is printed')
    const resumed = await run(['--cursor', cursor ?? ''])
    t.equal(resumed.code, 0)
    const rotated = (x: Run): number => Number(/\n {2}rotated\s+(\d+)\n/.exec(x.stdout)?.[1])
    t.equal(rotated(r) + rotated(resumed), 450, 'each record rotated once across the two runs')
  })

  await t.test('SIGINT while a busy lock is awaited: stops, exit 130; a rerun finishes', async t => {
    await onboard(ctx, ctx.oldStore, 'm_busy')
    const holder = createRefreshLock({ redis: ctx.redis, keys: ctx.keys, ttlMs: 60_000 })
    const held = await holder.acquire('m_busy')
    if (held === undefined) throw new Error('lock not taken')
    let sent = false
    const r = await run([], {}, (text, signal) => {
      if (!sent && text.includes('waiting for 1 merchant(s) whose refresh lock is busy')) {
        sent = true
        signal('SIGINT')
      }
    })
    t.ok(sent, 'the CLI said it waits for the busy merchant')
    t.equal(r.code, 130)
    t.match(r.stdout, /interrupted; run it again/)
    t.equal(await ctx.kid('m_busy'), 'old', 'the locked record is untouched')
    await holder.release(held)
    const again = await run()
    t.equal(again.code, 0)
    t.match(again.stdout, /\n {2}rotated\s+1\n/)
  })

  const text = outputs.join('\n')
  const secretsOut = [...ctx.written.values()].flatMap(r => [r.accessToken, r.refreshToken, r.accessToken.split('.')[2], r.refreshToken.split('.')[2]])
  secretsOut.push(b64(NEW), b64(OLD), b64(GONE), s.clientSecret, s.apiSecret, s.otherApiSecret)
  t.ok(secretsOut.length > 400, 'tokens and keys to look for')
  t.equal(secretsOut.filter(x => text.includes(x)).length, 0, 'no token, key or secret in any output of the CLI')
})
