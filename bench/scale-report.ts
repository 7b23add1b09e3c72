// The scale benchmark's section of bench/RESULTS.md, between its markers: replaced on every run,
// appended when the file has none; the rest of the file is kept as it is.
import { readFileSync, writeFileSync } from 'node:fs'
import { num } from './numbers.js'
import { BACKGROUND } from './scale-redis.js'
import type { TokenSizes } from './scale-seed.js'

export const START_MARKER = '<!-- scale:start -->'
export const END_MARKER = '<!-- scale:end -->'

/** The goals of the issue: Redis memory per merchant (of its raw token bytes), bytes a listing reads per merchant. */
export const memoryGoal = (t: TokenSizes): number => 1.2 * (t.access + t.refresh) + 400
export const LISTING_GOAL = 1200

export interface Scrape { commands: Map<string, number>, ms: number }
export interface LookupPass {
  before: number
  after: number
  peak: number
  seconds: number
  /** RSS, and the V8 heap and external memory (prom-client's figures), after the settling time. */
  settled: number
  heap: { used: number | undefined, total: number | undefined, external: number | undefined }
  cacheEntries: number | undefined
  rps: number
}

export interface DeploymentResult {
  kind: 'standalone' | 'cluster'
  seedS: number
  usedDelta: number
  keysDelta: number
  sample: { n: number, meta: number, tokens: number }
  firstScrape: Scrape
  nextScrape: Scrape
  scrapeMedianMs: number
  scrapeCount: number
  listing: { pages: number, items: number, distinct: number, ms: number, outBytes: number, inBytes: number }
}

export interface Lookups { maxEntries: number, hotSet: number, rounds: number, cached: LookupPass, zero: LookupPass }

export interface ScaleRun {
  date: string
  machine: { cpu: string, cores: number, memory: number, node: string, redis: string, load: [number, number] }
  merchants: number
  tokens: TokenSizes
  settleSeconds: number
  seedConcurrency: number
  lookupConcurrency: number
  loadSeconds: number
  connections: number
  deployments: DeploymentResult[]
  lookups: Lookups
}

const bytes = (n: number): string => `${num(n)} B`
const mib = (n: number): string => `${num(n / 2 ** 20, 1)} MiB`
const ms = (n: number): string => `${num(n, n < 100 ? 1 : 0)} ms`
const heap = (p: LookupPass): string => `${mib(p.heap.used ?? NaN)} / ${mib(p.heap.total ?? NaN)}, ${mib(p.heap.external ?? NaN)}`
const verdict = (value: number, goal: number): string => value <= goal ? 'met' : '**NOT met**'

// Redis 7 names subcommands `container|sub`: escaped, the pipe does not end a table cell.
const cmdName = (c: string): string => c.replaceAll('|', '\\|')

function commands (s: Scrape): string {
  const own = [...s.commands].filter(([c]) => !BACKGROUND.has(c)).sort((a, b) => b[1] - a[1])
  const background = [...s.commands].filter(([c]) => BACKGROUND.has(c))
  const total = own.reduce((a, [, n]) => a + n, 0)
  const list = own.map(([c, n]) => `${cmdName(c)} ${num(n)}`).join(', ')
  const aside = background.length === 0 ? '' : `; besides, connection upkeep: ${background.map(([c, n]) => `${cmdName(c)} ${n}`).join(', ')}`
  return `${num(total)}${list === '' ? '' : ` (${list})`}${aside}`
}

export function renderScale (r: ScaleRun): string {
  const n = r.merchants
  const cols = r.deployments
  const row = (label: string, cell: (d: DeploymentResult) => string, goal = ''): string => `| ${label} | ${cols.map(cell).join(' | ')} | ${goal} |`
  const perMerchant = (d: DeploymentResult): number => d.usedDelta / n
  const listed = (d: DeploymentResult): number => d.listing.outBytes / n
  const goalCell = (value: (d: DeploymentResult) => number, goal: number): string => cols.map(d => verdict(value(d), goal)).join(' / ')
  const L = r.lookups
  const m = r.machine
  const raw = r.tokens.access + r.tokens.refresh
  const goal = memoryGoal(r.tokens)

  const lines = [
    START_MARKER,
    '## Scale (npm run bench:scale)',
    '',
    `Run ${r.date} on ${m.cpu} (${m.cores} cores, ${num(m.memory / 2 ** 30, 1)} GiB), Node ${m.node}, redis-server ${m.redis}; ` +
    `load average ${num(m.load[0], 2)} before, ${num(m.load[1], 2)} after. ${num(n)} merchants, each a ${num(r.tokens.access)}-character ` +
    `access-token JWT and a ${num(r.tokens.refresh)}-character refresh token (${num(raw)} raw token bytes), written through the ` +
    `token store's put() (${r.seedConcurrency} in flight). Goals: Redis memory ≤ 1.2 × raw token bytes + 400 B = ${bytes(goal)} per ` +
    `merchant; listing ≤ ${bytes(LISTING_GOAL)} read from Redis per merchant.`,
    '',
    `| | ${cols.map(d => d.kind === 'cluster' ? 'Cluster (3 masters)' : 'standalone').join(' | ')} | goal |`,
    `| --- | ${cols.map(() => '---:').join(' | ')} | --- |`,
    row('seeding through put()', d => `${num(d.seedS, d.seedS < 10 ? 2 : 1)} s (${num(n / d.seedS)}/s)`),
    row('**Redis memory per merchant** (used_memory delta / merchants)', d => bytes(perMerchant(d)), `≤ ${bytes(goal)}: ${goalCell(perMerchant, goal)}`),
    row('keys per merchant (DBSIZE delta / merchants)', d => num(d.keysDelta / n, 2)),
    row('MEMORY USAGE, metadata hash + tokens key (mean of a sample)', d => `${bytes(d.sample.meta)} + ${bytes(d.sample.tokens)} = ${bytes(d.sample.meta + d.sample.tokens)} (${num(d.sample.n)} merchants)`),
    row('/metrics, first scrape (reads the merchant counts): Redis commands run, a script\'s own included', d => commands(d.firstScrape)),
    row('/metrics, first scrape: time', d => ms(d.firstScrape.ms)),
    row('/metrics, next scrape (counts cached 30 s): Redis commands', d => commands(d.nextScrape)),
    row('/metrics, next scrapes: median time', d => `${ms(d.scrapeMedianMs)} (${d.scrapeCount} scrapes)`),
    row('listing, GET /internal/v1/merchants?limit=500: pages, merchants', d => `${num(d.listing.pages)} pages, ${num(d.listing.items)} items, ${num(d.listing.distinct)} distinct`),
    row('listing: total time', d => `${num(d.listing.ms / 1000, 2)} s (${num(d.listing.items / (d.listing.ms / 1000))} merchants/s)`),
    row('**listing: bytes read from Redis per merchant** (total_net_output_bytes)', d => bytes(listed(d)), `≤ ${bytes(LISTING_GOAL)}: ${goalCell(listed, LISTING_GOAL)}`),
    row('listing: bytes sent to Redis per merchant (total_net_input_bytes)', d => bytes(d.listing.inBytes / n)),
    '',
    `Lookups (standalone): a fresh service process per column; one GET …/access-token of each of the ${num(n)} merchants ` +
    `(${r.lookupConcurrency} in flight); then, both services running, autocannon for ${r.loadSeconds} s with ${r.connections} connections on each in turn.`,
    '',
    `| | TOKEN_CACHE_MAX_ENTRIES=${num(L.maxEntries)} (default) | TOKEN_CACHE_MAX_ENTRIES=0 |`,
    '| --- | ---: | ---: |',
    `| service RSS before the lookups | ${mib(L.cached.before)} | ${mib(L.zero.before)} |`,
    `| **service RSS after ${num(n)} distinct lookups** | ${mib(L.cached.after)} | ${mib(L.zero.after)} |`,
    `| growth | ${mib(L.cached.after - L.cached.before)} | ${mib(L.zero.after - L.zero.before)} |`,
    `| peak RSS (VmHWM) | ${mib(L.cached.peak)} | ${mib(L.zero.peak)} |`,
    `| service RSS ${r.settleSeconds} s later (audit summaries written) | ${mib(L.cached.settled)} | ${mib(L.zero.settled)} |`,
    `| then: V8 heap used / total, external memory (prom-client) | ${heap(L.cached)} | ${heap(L.zero)} |`,
    `| cybs_token_cache_entries after | ${num(L.cached.cacheEntries ?? NaN)} | ${num(L.zero.cacheEntries ?? NaN)} |`,
    `| the ${num(n)} distinct lookups took | ${num(L.cached.seconds, 1)} s | ${num(L.zero.seconds, 1)} s |`,
    `| lookups/s (autocannon, median of ${L.rounds} rounds taken in turns) | ${num(L.cached.rps)} cached (${num(L.hotSet)} merchants in the cache, in turn) | ${num(L.zero.rps)} cold (every lookup reads Redis and decrypts) |`,
    '',
    `**Cold / cached lookups: ${num(L.zero.rps / L.cached.rps, 2)}** (a cached lookup is ${num(L.cached.rps / L.zero.rps, 1)} times as fast).`,
    '',
    ...verdicts(r),
    '',
    'How it ran: one private redis-server (no persistence), then a Cluster of three masters, no replicas, ' +
    'each seeded from empty by the app registered in the runner\'s process (its `tokenStore` decorator); memory is read with the ' +
    'seeding app closed. The service runs as `node dist/src/server.js` (`NODE_ENV=production`, `LOG_LEVEL=info`, ' +
    '`KEEPALIVE_INTERVAL_MS=600000` so that no tick falls in a measured window). Commands are INFO commandstats after ' +
    'CONFIG RESETSTAT, summed over the masters, the measurement\'s own left out; listing bytes are INFO stats after CONFIG RESETSTAT. ' +
    'Timings and requests/s depend on the machine; the byte and command counts do not.',
    END_MARKER,
    ''
  ]
  return lines.join('\n')
}

function verdicts (r: ScaleRun): string[] {
  const out: string[] = []
  const goal = memoryGoal(r.tokens)
  for (const d of r.deployments) {
    const name = d.kind === 'cluster' ? 'Cluster' : 'standalone'
    const mem = d.usedDelta / r.merchants
    const list = d.listing.outBytes / r.merchants
    out.push(mem <= goal
      ? `- ${name}: memory goal met (${bytes(mem)} per merchant, goal ${bytes(goal)}).`
      : `- ${name}: **memory goal NOT met**: ${bytes(mem)} per merchant, ${bytes(mem - goal)} over the goal of ${bytes(goal)}.`)
    out.push(list <= LISTING_GOAL
      ? `- ${name}: listing goal met (${bytes(list)} read per merchant, goal ${bytes(LISTING_GOAL)}).`
      : `- ${name}: **listing goal NOT met**: ${bytes(list)} read per merchant, goal ${bytes(LISTING_GOAL)}.`)
    if (d.listing.distinct !== r.merchants) out.push(`- ${name}: **the listing returned ${num(d.listing.distinct)} distinct merchants of ${num(r.merchants)}.**`)
  }
  return out
}

/** Replaces the section between the markers, or appends it; the rest of the file is kept. */
export function writeScale (file: string, section: string): void {
  let previous = ''
  try { previous = readFileSync(file, 'utf8') } catch {}
  const start = previous.indexOf(START_MARKER)
  const end = previous.indexOf(END_MARKER, start)
  if (start >= 0 && end >= 0) {
    const after = previous.slice(end + END_MARKER.length).replace(/^\n/, '')
    writeFileSync(file, previous.slice(0, start) + section + after)
  } else {
    const sep = previous === '' ? '' : previous.endsWith('\n\n') ? '' : previous.endsWith('\n') ? '\n' : '\n\n'
    writeFileSync(file, previous + sep + section)
  }
}
