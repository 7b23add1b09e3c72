// `npm run bench:scale`: the service with 100,000 merchants (BENCH_SCALE_MERCHANTS), on a private
// redis-server and on a 3-master Cluster: Redis memory per merchant, the Redis commands of a
// /metrics scrape, the bytes a full listing reads from Redis, the service's RSS after a lookup of
// every merchant (default token cache, and none), cold against cached lookups per second. Writes
// its section of bench/RESULTS.md (bench/scale-report.ts) and prints it; bench/README.md says more.
import { randomBytes } from 'node:crypto'
import { mkdirSync } from 'node:fs'
import { cpus, loadavg, totalmem } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'
import { loadConfig } from '../src/config.js'
import { createRedisKeys } from '../src/redis-keys.js'
import { createChildren, type Children } from './children.js'
import { failLine, runGuarded } from './guard.js'
import { median } from './numbers.js'
import { BenchError, OUT, readSettings } from './settings.js'
import { commandCounts, infoSum, memoryUsage, redisVersion, resetStats, startCluster, startStandalone, type Deployment } from './scale-redis.js'
import { renderScale, writeScale, type DeploymentResult, type LookupPass, type Lookups, type Scrape } from './scale-report.js'
import { merchantId, seed, type TokenSizes } from './scale-seed.js'
import { listAll, lookupEach, lookupRate, metricValue, rss, scrape, serviceEnv, startService, readStatus, stopService, type Service } from './scale-service.js'

function int (name: string, fallback: number, min: number): number {
  const v = Number(process.env[name] ?? fallback)
  if (!Number.isInteger(v) || v < min) throw new BenchError(`${name}: must be an integer >= ${min}`)
  return v
}

let opts: { merchants: number, tokens: TokenSizes, settleSeconds: number, cluster: boolean, loadSeconds: number, connections: number, seedConcurrency: number, lookupConcurrency: number, sample: number, scrapes: number, results: string, deadlineMs: number }
let children: Children
try {
  const merchants = int('BENCH_SCALE_MERCHANTS', 100_000, 1)
  opts = {
    merchants,
    // "1.5 KB" and "1 KB", as the simulator's access tokens in `npm run bench` (about 1,490 bytes).
    tokens: { access: int('BENCH_SCALE_ACCESS_BYTES', 1500, 200), refresh: int('BENCH_SCALE_REFRESH_BYTES', 1000, 200) },
    // Longer than AUDIT_SUMMARY_SECONDS (10): the pending audit summaries are written by then.
    settleSeconds: int('BENCH_SCALE_SETTLE_SECONDS', 15, 0),
    cluster: process.env.BENCH_SCALE_CLUSTER !== '0',
    loadSeconds: int('BENCH_SCALE_LOAD_SECONDS', 5, 1),
    connections: int('BENCH_SCALE_CONNECTIONS', 32, 1),
    seedConcurrency: int('BENCH_SCALE_SEED_CONCURRENCY', 256, 1),
    lookupConcurrency: 32,
    sample: Math.min(merchants, 1000),
    scrapes: 20,
    results: readSettings().results,
    // Generous: about 10 ms per merchant for everything, on top of the start-ups.
    deadlineMs: 300_000 + merchants * 10
  }
  children = createChildren({ ...readSettings(), pin: false, startMs: 30_000, stopGraceMs: 10_000 })
} catch (err) {
  process.stderr.write(failLine('bench:scale', err))
  process.exit(1)
}

const keys = createRedisKeys('cybs:')
const secrets = { encryption: randomBytes(32).toString('base64'), api: randomBytes(32).toString('base64url') }
const closers: Array<() => Promise<unknown>> = []
const ROUNDS = 3
const progress = (line: string): void => { process.stderr.write(`bench:scale: ${line}\n`) }

/** CONFIG RESETSTAT, one scrape, the commands it caused. */
async function countedScrape (d: Deployment, s: Service): Promise<Scrape> {
  await resetStats(d)
  const { ms } = await scrape(s)
  return { commands: await commandCounts(d), ms }
}

async function measure (kind: Deployment['kind']): Promise<{ result: DeploymentResult, deployment: Deployment, env: Record<string, string> }> {
  const n = opts.merchants
  progress(`${kind}: starting Redis`)
  const d = kind === 'cluster' ? await startCluster() : await startStandalone()
  closers.push(d.close)
  const env = serviceEnv(d.env, secrets)
  const usedBefore = await infoSum(d, 'memory', 'used_memory')
  const dbsize = async (): Promise<number> => (await Promise.all(d.admins.map(async c => await c.dbsize()))).reduce((a, b) => a + b, 0)
  const keysBefore = await dbsize()
  progress(`${kind}: seeding ${n} merchants`)
  const seedS = await seed(env, n, opts.seedConcurrency, opts.tokens)
  await sleep(500) // the seeding app's connections are gone
  const usedDelta = await infoSum(d, 'memory', 'used_memory') - usedBefore
  const keysDelta = await dbsize() - keysBefore
  let meta = 0
  let tokens = 0
  for (let k = 0; k < opts.sample; k++) {
    const id = merchantId(Math.floor(k * n / opts.sample))
    meta += await memoryUsage(d, keys.merchant(id))
    tokens += await memoryUsage(d, keys.merchantTokens(id))
  }

  progress(`${kind}: scrapes and listing`)
  const s = await startService(children, `scale-${kind}`, env, secrets.api)
  // Connections to every master (opened on first use on Cluster) and the change subscription
  // are set up before the scrape, so that its count holds the scrape's commands only.
  for (let k = 0; k < 16; k++) await readStatus(s, merchantId(Math.floor(k * n / 16)))
  await sleep(1000)
  const firstScrape = await countedScrape(d, s)
  const nextScrape = await countedScrape(d, s)
  const times: number[] = []
  for (let i = 0; i < opts.scrapes; i++) times.push((await scrape(s)).ms)
  await resetStats(d)
  const listing = await listAll(s)
  const outBytes = await infoSum(d, 'stats', 'total_net_output_bytes')
  const inBytes = await infoSum(d, 'stats', 'total_net_input_bytes')
  await stopService(children, s)
  return {
    result: {
      kind,
      seedS,
      usedDelta,
      keysDelta,
      sample: { n: opts.sample, meta: meta / opts.sample, tokens: tokens / opts.sample },
      firstScrape,
      nextScrape,
      scrapeMedianMs: median(times),
      scrapeCount: times.length,
      listing: { ...listing, outBytes, inBytes }
    },
    deployment: d,
    env
  }
}

/** A fresh service: its RSS before and after one lookup of every merchant, and after settling. */
async function lookupPass (env: Record<string, string>, name: string): Promise<{ service: Service, pass: Omit<LookupPass, 'rps'> }> {
  const service = await startService(children, name, env, secrets.api)
  const before = rss(service).rss
  progress(`${name}: ${opts.merchants} distinct lookups`)
  const seconds = await lookupEach(service, opts.merchants, opts.lookupConcurrency)
  const after = rss(service)
  await sleep(opts.settleSeconds * 1000)
  const settled = rss(service).rss
  const metrics = (await scrape(service)).text
  const value = (name: string): number | undefined => metricValue(metrics, name)
  return {
    service,
    pass: {
      before,
      after: after.rss,
      peak: after.peak,
      seconds,
      settled,
      heap: { used: value('nodejs_heap_size_used_bytes'), total: value('nodejs_heap_size_total_bytes'), external: value('nodejs_external_memory_bytes') },
      cacheEntries: value('cybs_token_cache_entries')
    }
  }
}

/**
 * Both services, then autocannon on each in turn, ROUNDS times (the machine's drift hits both
 * alike): on the default cache the last merchants looked up, its most recent; with no cache,
 * every merchant in turn, each lookup a Redis read and a decryption. Medians.
 */
async function lookups (env: Record<string, string>): Promise<Lookups> {
  const n = opts.merchants
  const maxEntries = loadConfig(env).tokenCache.maxEntries
  const hotSet = Math.min(n, maxEntries, 10_000)
  const cached = await lookupPass(env, 'scale-cache-default')
  const zero = await lookupPass({ ...env, TOKEN_CACHE_MAX_ENTRIES: '0' }, 'scale-cache-0')
  progress(`cold and cached lookups/s, ${ROUNDS} rounds of ${opts.loadSeconds} s each`)
  const rates: { cached: number[], zero: number[] } = { cached: [], zero: [] }
  for (let round = 0; round < ROUNDS; round++) {
    rates.cached.push(await lookupRate(cached.service, n - hotSet, hotSet, opts.loadSeconds, opts.connections))
    rates.zero.push(await lookupRate(zero.service, 0, n, opts.loadSeconds, opts.connections))
  }
  await stopService(children, cached.service)
  await stopService(children, zero.service)
  return {
    maxEntries,
    hotSet,
    rounds: ROUNDS,
    cached: { ...cached.pass, rps: median(rates.cached) },
    zero: { ...zero.pass, rps: median(rates.zero) }
  }
}

async function main (): Promise<void> {
  mkdirSync(OUT, { recursive: true })
  const n = opts.merchants
  const loadBefore = loadavg()[0]
  const date = new Date().toISOString()
  const standalone = await measure('standalone')
  const redis = await redisVersion(standalone.deployment)

  const lookupResults = await lookups(standalone.env)
  await standalone.deployment.close()

  const deployments = [standalone.result]
  if (opts.cluster) {
    const cluster = await measure('cluster')
    await cluster.deployment.close()
    deployments.push(cluster.result)
  }

  const section = renderScale({
    date,
    machine: { cpu: cpus()[0]?.model ?? 'unknown CPU', cores: cpus().length, memory: totalmem(), node: process.version, redis, load: [loadBefore, loadavg()[0]] },
    merchants: n,
    tokens: opts.tokens,
    settleSeconds: opts.settleSeconds,
    seedConcurrency: opts.seedConcurrency,
    lookupConcurrency: opts.lookupConcurrency,
    loadSeconds: opts.loadSeconds,
    connections: opts.connections,
    deployments,
    lookups: lookupResults
  })
  writeScale(opts.results, section)
  process.stdout.write(section)
}

await runGuarded(main, {
  name: 'bench:scale',
  deadlineMs: opts.deadlineMs,
  cleanupMs: 30_000,
  died: children.died,
  cleanup: async () => {
    await children.stopAll()
    for (const close of closers.reverse()) await close().catch(() => {})
  }
})
