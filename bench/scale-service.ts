// The service under measurement, a child process (`node dist/src/server.js`, production logging
// to bench/out/<name>.log), and what the scale benchmark does to it over HTTP: scrapes, listing,
// lookups (one pass over every merchant, then autocannon), and its resident memory.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import autocannon, { type Options } from 'autocannon'
import { Pool } from 'undici'
import { freePort } from '../src/net-utils.js'
import type { Child, Children } from './children.js'
import { BenchError, OUT, ROOT } from './settings.js'
import { merchantId } from './scale-seed.js'

export interface Service { child: Child, pool: Pool, url: string, headers: Record<string, string> }

/** The environment of both the seeding app and the service: the same keys, the same Redis. */
export function serviceEnv (redis: Record<string, string>, secrets: { encryption: string, api: string }, port = 0): Record<string, string> {
  return {
    NODE_ENV: 'production',
    LOG_LEVEL: 'info',
    HOST: '127.0.0.1',
    PORT: String(port),
    PUBLIC_BASE_URL: `http://127.0.0.1:${port === 0 ? 3000 : port}`,
    // No lookup refreshes (the records' access tokens are valid for hours): nothing listens here.
    CYBS_ENVIRONMENT: 'simulator',
    CYBS_AUTHORIZE_URL: 'http://127.0.0.1:9/ebc2/oauth/authorize',
    CYBS_TOKEN_URL: 'http://127.0.0.1:9/oauth2/v3/token',
    CYBS_CLIENT_ID: 'bench-partner',
    CYBS_CLIENT_SECRET: 'bench-partner-secret',
    TOKEN_ENCRYPTION_KEYS: `scale:${secrets.encryption}`,
    INTERNAL_API_KEYS: `scale:${secrets.api}`,
    // The keep-alive's tick would add its command to the scrape's window now and then.
    KEEPALIVE_INTERVAL_MS: '600000',
    ...redis
  }
}

export async function startService (children: Children, name: string, env: Record<string, string>, apiSecret: string): Promise<Service> {
  const port = await freePort()
  const child = await children.start(name, process.execPath, [join(ROOT, 'dist', 'src', 'server.js')], port,
    { PATH: process.env.PATH, ...env, PORT: String(port), PUBLIC_BASE_URL: `http://127.0.0.1:${port}` }, join(OUT, `${name}.log`))
  const url = `http://127.0.0.1:${port}`
  const service = { child, pool: new Pool(url, { connections: 64 }), url, headers: { authorization: `Bearer ${apiSecret}` } }
  await get(service, '/health/live')
  return service
}

export async function stopService (children: Children, s: Service): Promise<void> {
  await s.pool.close()
  await children.stop(s.child)
}

async function get (s: Service, path: string): Promise<string> {
  const res = await s.pool.request({ method: 'GET', path, headers: s.headers })
  const body = await res.body.text()
  if (res.statusCode !== 200) throw new BenchError(`GET ${path.replace(/cursor=[^&]*/, 'cursor=…')}: ${res.statusCode} ${body.slice(0, 200)}`)
  return body
}

/** GET /internal/v1/merchants/:id (the status: metadata only). */
export async function readStatus (s: Service, id: string): Promise<void> {
  await get(s, `/internal/v1/merchants/${id}`)
}

/** One GET /metrics: its text and milliseconds. */
export async function scrape (s: Service): Promise<{ text: string, ms: number }> {
  const t0 = performance.now()
  const text = await get(s, '/metrics')
  return { text, ms: performance.now() - t0 }
}

export const metricValue = (text: string, name: string): number | undefined => {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text)
  return m === null ? undefined : Number(m[1])
}

/** Every merchant through GET /internal/v1/merchants?limit=500 pages. */
export async function listAll (s: Service): Promise<{ pages: number, items: number, distinct: number, ms: number }> {
  const seen = new Set<string>()
  let pages = 0
  let items = 0
  let cursor: string | null = null
  const t0 = performance.now()
  do {
    const page = JSON.parse(await get(s, `/internal/v1/merchants?limit=500${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`)) as { items: Array<{ merchant_id: string }>, next_cursor: string | null }
    pages++
    items += page.items.length
    for (const m of page.items) seen.add(m.merchant_id)
    cursor = page.next_cursor
  } while (cursor !== null)
  return { pages, items, distinct: seen.size, ms: performance.now() - t0 }
}

const lookupPath = (i: number): string => `/internal/v1/merchants/${merchantId(i)}/access-token`

/** One lookup of each merchant 0…n-1, `concurrency` in flight; every answer must be a 200. */
export async function lookupEach (s: Service, n: number, concurrency: number): Promise<number> {
  let next = 0
  const t0 = performance.now()
  const worker = async (): Promise<void> => { while (next < n) await get(s, lookupPath(next++)) }
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker))
  return (performance.now() - t0) / 1000
}

/** autocannon for `seconds` over merchants first…first+count-1 in turn; requests per second. */
export async function lookupRate (s: Service, first: number, count: number, seconds: number, connections: number): Promise<number> {
  let i = 0
  const opts: Options & { requests: unknown[] } = {
    url: s.url,
    connections,
    duration: seconds,
    headers: s.headers,
    requests: [{ method: 'GET', setupRequest: (req: Record<string, unknown>) => ({ ...req, path: lookupPath(first + (i++ % count)) }) }]
  }
  const result = await autocannon(opts)
  const bad = result.errors + result.timeouts + result.non2xx
  if (bad > 0) throw new BenchError(`lookups: ${result.errors} errors, ${result.timeouts} timeouts, ${result.non2xx} non-2xx answers`)
  return result['2xx'] / (result.duration > 0 ? result.duration : seconds)
}

/** Resident memory (VmRSS) and its peak (VmHWM) of the service process, in bytes. */
export function rss (s: Service): { rss: number, peak: number } {
  const status = readFileSync(`/proc/${s.child.proc.pid ?? 0}/status`, 'utf8')
  const kb = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024
  return { rss: kb('VmRSS'), peak: kb('VmHWM') }
}
