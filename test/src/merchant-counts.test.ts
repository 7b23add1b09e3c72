// The merchant counters (src/merchant-counts.ts) kept by the store's write scripts, and their
// repair (src/recount-merchants.ts), on a private standalone Redis and on a 3-master Cluster:
// every write moves the counts exactly, a lost compare-and-set moves nothing, the gauge's read
// is a handful of commands whatever the number of merchants, and the recount fixes drift while
// writes go on.
import t from 'tap'
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { randomBytes } from 'node:crypto'
import calculateSlot from 'cluster-key-slot'
import type { Cluster, Redis } from 'ioredis'
import { serviceClient, startRedis, scanKeys } from '../helpers/redis.js'
import { startCluster } from '../helpers/redis-topologies.js'
import { envFor, secrets } from '../helper.js'
import { loadConfig } from '../../src/config.js'
import { createRedisClient, waitReady, type RedisClient } from '../../src/redis-client.js'
import { createRedisKeys } from '../../src/redis-keys.js'
import { createKeyRing } from '../../src/key-ring.js'
import { createTokenStore, type TokenStore } from '../../src/token-store.js'
import { SLOTS, createMerchantCounts, slotTag } from '../../src/merchant-counts.js'
import { recountMerchants } from '../../src/recount-merchants.js'
import { newRecord, putLegacyRecord } from '../helpers/records.js'

type Tap = Parameters<Parameters<typeof t.test>[0]>[0]

const keys = createRedisKeys('mc:')
const ring = createKeyRing([{ kid: 'k1', key: randomBytes(32) }])
const counts = (connected: number, reauth: number): { connected: number, reauthorization_required: number } => ({ connected, reauthorization_required: reauth })

async function standalone (t: Tap): Promise<{ redis: Redis, store: TokenStore }> {
  const server = await startRedis(t)
  const redis = await serviceClient(t, server)
  return { redis, store: createTokenStore(redis, ring, keys) }
}

t.test('every slot has a tag that hashes to it', async t => {
  const bad: number[] = []
  for (let slot = 0; slot < SLOTS; slot++) {
    const tag = slotTag(slot)
    if (calculateSlot(keys.merchantCounts(tag)) !== slot || !/^[0-9a-z]{1,4}$/.test(tag)) bad.push(slot)
  }
  t.same(bad, [], 'keys.merchantCounts(slotTag(s)) is in slot s, for all 16384 slots')
})

/** The write paths, each followed by the counts they must leave; shared by both topologies. */
async function writesMoveCounts (t: Tap, store: TokenStore, ids: string[]): Promise<void> {
  const [a, b, c] = ids
  t.same(await store.countByStatus(), counts(0, 0), 'nothing stored: zeros')
  await store.put(newRecord(a))
  await store.put(newRecord(b))
  await store.put(newRecord(c))
  t.same(await store.countByStatus(), counts(3, 0), 'three onboardings')
  const ma = await store.getMeta(a)
  if (ma === undefined) throw new Error('a is not stored')
  t.equal(await store.put(newRecord(a), ma), 2, 'a refresh')
  t.same(await store.countByStatus(), counts(3, 0), 'a refresh moves nothing')
  t.equal(await store.put(newRecord(a), ma), undefined, 'a refresh that loses its compare-and-set')
  t.equal(await store.markReauthorizationRequired(a, ma), undefined, 'a stale marking')
  t.same(await store.countByStatus(), counts(3, 0), 'lost writes move nothing')
  t.equal(await store.markReauthorizationRequired(a, { version: 2, grant: ma.grant }), 3)
  t.same(await store.countByStatus(), counts(2, 1), 'marked: connected → reauthorization_required')
  t.equal(await store.markReauthorizationRequired(a, { version: 3, grant: ma.grant }), 4, 'marked again')
  t.same(await store.countByStatus(), counts(2, 1), 'a second marking moves nothing')
  await store.put(newRecord(a))
  t.same(await store.countByStatus(), counts(3, 0), 'a new onboarding over it: connected again')
  await store.put(newRecord(b, { status: 'reauthorization_required' }))
  t.same(await store.countByStatus(), counts(2, 1), 'a put may store either status')
  t.equal(await store.delete(b), true)
  t.equal(await store.delete(b), false)
  t.same(await store.countByStatus(), counts(2, 0), 'a delete uncounts once')
  const racing = await Promise.all(ids.slice(3).map(async id => await store.put(newRecord(id))))
  t.ok(racing.every(v => v === 1))
  const again = await Promise.all(ids.slice(3).map(async id => await store.put(newRecord(id))))
  t.ok(again.every(v => v === 2))
  t.same(await store.countByStatus(), counts(ids.length - 1, 0), `${ids.length - 3} concurrent onboardings, each twice`)
  await Promise.all(ids.map(async id => await store.delete(id)))
  t.same(await store.countByStatus(), counts(0, 0), 'all deleted: zeros')
}

t.test('standalone: writes keep the counts; one command reads them', async t => {
  const { redis, store } = await standalone(t)
  const ids = Array.from({ length: 40 }, (_, i) => `m_${i}`)
  await writesMoveCounts(t, store, ids)
  t.same(await scanKeys(redis), [], 'counters at zero are removed: no key left')

  await store.put(newRecord('m_x'))
  const before = Number(/^total_commands_processed:(\d+)/m.exec(await redis.info('stats'))?.[1])
  await store.countByStatus()
  const after = Number(/^total_commands_processed:(\d+)/m.exec(await redis.info('stats'))?.[1])
  t.equal(after - before, 2, 'the gauge\'s read is one command (and the INFO)')
})

t.test('records of the old layout count from their first write in the new one', async t => {
  const { redis, store } = await standalone(t)
  await putLegacyRecord(redis, ring, keys, newRecord('m_old'))
  await putLegacyRecord(redis, ring, keys, newRecord('m_old2'))
  t.same(await store.countByStatus(), counts(0, 0), 'not counted while in the old layout')
  t.equal(await store.markReauthorizationRequired('m_old2', { version: 1, grant: 'legacy-grant-id0' }), 2)
  t.same(await store.countByStatus(), counts(0, 0), 'marking an old-layout record counts nothing')
  t.equal(await store.put(newRecord('m_old'), { version: 1, grant: 'legacy-grant-id0' }), 2, 'its refresh rewrites it')
  t.same(await store.countByStatus(), counts(1, 0), 'and counts it once')
  t.equal(await store.delete('m_old2'), true)
  t.same(await store.countByStatus(), counts(1, 0), 'deleting an uncounted record uncounts nothing')
  t.same((await recountMerchants(redis, keys, { dryRun: true })).corrected, 0, 'the recount agrees')
})

t.test('standalone recount: repairs drift, keeps the writes made meanwhile, dry run writes nothing', async t => {
  const { redis, store } = await standalone(t)
  for (let i = 0; i < 30; i++) await store.put(newRecord(`m_${i}`, { status: i < 10 ? 'reauthorization_required' : 'connected' }))
  await putLegacyRecord(redis, ring, keys, newRecord('m_legacy'))
  // Drift: records gone by expiry (their counts stay), and a counter altered by hand.
  await redis.del(keys.merchant('m_0'), keys.merchantTokens('m_0'), keys.merchant('m_29'), keys.merchantTokens('m_29'))
  await redis.hincrby(keys.merchantCounts(), 'connected', 5)
  t.same(await store.countByStatus(), counts(25, 10), 'drifted')

  const dry = await recountMerchants(redis, keys, { dryRun: true })
  t.match(dry, { complete: true, corrected: 1, counted: counts(19, 9), before: counts(25, 10) }, 'the dry run sees it')
  t.same(await store.countByStatus(), counts(25, 10), 'and writes nothing')

  let pages = 0
  const fixed = await recountMerchants(redis, keys, { onProgress: () => { pages++ } })
  t.ok(pages > 0, 'progress reported')
  t.match(fixed, { complete: true, corrected: 1, counted: counts(19, 9) })
  t.same(await store.countByStatus(), counts(19, 9), 'repaired')

  // The correction is a delta: an onboarding that lands after the walk read the counters (and
  // after it read the records) stays counted.
  let during: Promise<number | undefined> | undefined
  await recountMerchants(redis, keys, { onProgress: () => { during ??= store.put(newRecord('m_during')) } })
  t.equal(await during, 1, 'an onboarding sent before the recount wrote its correction')
  await store.put(newRecord('m_after'))
  t.same(await store.countByStatus(), counts(21, 9), 'writes made during and after the recount are counted')
  t.equal((await recountMerchants(redis, keys, { dryRun: true })).corrected, 0, 'and agree with the records')

  const stop = new AbortController()
  stop.abort()
  await redis.hincrby(keys.merchantCounts(), 'connected', 1)
  t.match(await recountMerchants(redis, keys, { signal: stop.signal }), { complete: false, corrected: 0 }, 'interrupted: nothing written')
  t.same(await store.countByStatus(), counts(22, 9))
})

t.test('Redis Cluster: per-slot counters, one pipeline per master, recount by slot', async t => {
  const cluster = await startCluster(t, 3)
  const redis = createRedisClient({ mode: 'cluster', nodes: cluster.spec.split(',').map(hp => ({ host: '127.0.0.1', port: Number(hp.split(':')[1]) })) }) as Cluster
  redis.on('error', () => {})
  t.teardown(() => { redis.disconnect() })
  if (!await waitReady(redis, 10_000)) throw new Error('cluster did not become ready')
  const store = createTokenStore(redis, ring, keys)
  const ids = Array.from({ length: 40 }, (_, i) => `m_c${i}`)
  await writesMoveCounts(t, store, ids)

  for (const id of ids) await store.put(newRecord(id))
  const mc = createMerchantCounts(redis as RedisClient, keys)
  for (const id of ids.slice(0, 3)) {
    const slot = Number(await redis.call('CLUSTER', 'KEYSLOT', keys.merchant(id)))
    t.equal(Number(await redis.call('CLUSTER', 'KEYSLOT', mc.keyFor(id))), slot, `${id}: its counters share its slot`)
    t.equal(Number(await redis.call('CLUSTER', 'KEYSLOT', keys.merchantTokens(id))), slot, `${id}: so does its tokens key`)
  }
  const calls = async (): Promise<number[]> => await Promise.all(cluster.clients.map(async c => {
    const stats = await c.info('stats')
    return Number(/^total_commands_processed:(\d+)/m.exec(stats)?.[1])
  }))
  const c0 = await calls()
  t.same(await store.countByStatus(), counts(40, 0), 'summed over the slots of every master')
  const c1 = await calls()
  // Each master: the INFO above, the script, and the HMGETs it ran on its own slots.
  t.same(c1.map((n, i) => n - c0[i]).reduce((a, b) => a + b, 0), 3 * 2 + SLOTS, 'one script per master, reading each slot\'s counters once')

  // Drift in two slots; a recount resumed from the slot of the second repairs it alone.
  const [first, second] = [...ids].sort((x, y) => calculateSlot(keys.merchant(x)) - calculateSlot(keys.merchant(y)))
  const s1 = calculateSlot(keys.merchant(first))
  const s2 = calculateSlot(keys.merchant(second))
  t.ok(s1 < s2, 'two merchants in two slots')
  await redis.del(keys.merchant(first), keys.merchantTokens(first))
  await redis.hincrby(mc.keyFor(second), 'reauthorization_required', 2)
  t.same(await store.countByStatus(), counts(40, 2))
  t.match(await recountMerchants(redis, keys, { fromSlot: s2 }), { complete: true, corrected: 1 }, 'from the second slot: one key corrected')
  t.same(await store.countByStatus(), counts(40, 0))
  const stop = new AbortController()
  stop.abort()
  t.match(await recountMerchants(redis, keys, { signal: stop.signal, fromSlot: 5 }), { complete: false, nextSlot: 5 }, 'interrupted: says where to resume')
  t.match(await recountMerchants(redis, keys), { complete: true, corrected: 1, counted: counts(39, 0) }, 'a whole recount fixes the first')
  t.same(await store.countByStatus(), counts(39, 0))
})

t.test('npm run recount: from a built copy, with the environment of the service', async t => {
  const dir = mkdtempSync(join(tmpdir(), 'recount-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const root = fileURLToPath(new URL('../..', import.meta.url))
  writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({
    extends: join(root, 'tsconfig.build.json'),
    compilerOptions: { rootDir: root, outDir: dir, sourceMap: false, noCheck: true },
    include: [],
    files: [join(root, 'src', 'recount.ts')]
  }))
  writeFileSync(join(dir, 'package.json'), '{ "type": "module" }\n')
  symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'))
  execFileSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(dir, 'tsconfig.json')], { stdio: 'pipe' })

  const server = await startRedis(t)
  const redis = await serviceClient(t, server)
  const s = secrets()
  const env = envFor(s, server.url, 'http://127.0.0.1:9', { REDIS_KEY_PREFIX: 'cybs:' })
  const cybs = createRedisKeys('cybs:')
  const store = createTokenStore(redis, createKeyRing(loadConfig(env).encryptionKeys), cybs)
  for (const id of ['m_1', 'm_2', 'm_3']) await store.put(newRecord(id))
  await redis.hset(cybs.merchantCounts(), 'connected', 7, 'reauthorization_required', 2)
  const run = (args: string[]): { code: number, stdout: string, stderr: string } => {
    const r = spawnSync(process.execPath, [join(dir, 'src', 'recount.js'), ...args], { env: { PATH: process.env.PATH ?? '', ...env }, encoding: 'utf8', timeout: 60_000 })
    return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr }
  }
  const dry = run(['--dry-run'])
  t.equal(dry.code, 0, dry.stderr)
  t.match(dry.stdout, /connected: counters \/ records\s+7 \/ 3/)
  t.match(dry.stdout, /counters keys to correct\s+1/)
  t.same(await store.countByStatus(), counts(7, 2), 'the dry run wrote nothing')
  const fixed = run([])
  t.equal(fixed.code, 0, fixed.stderr)
  t.match(fixed.stdout, /counters keys corrected\s+1/)
  t.same(await store.countByStatus(), counts(3, 0), 'repaired')
  t.notMatch(fixed.stdout + fixed.stderr, /m_1|m_2|m_3/, 'no merchant id printed')
  t.equal(run(['--from-slot', 'x']).code, 1, 'a bad argument: exit 1')
})
