// `npm run bench:webhooks`: webhook delivery end to end. A private redis-server, a receiver on
// 127.0.0.1 (node:http) that verifies every signature with standardwebhooks on the raw body and
// answers 204, and the service's worker in 1 or 2 child processes (replicas) sharing the Redis.
// BENCH_WEBHOOK_EVENTS events are appended through the event log (webhooks on); then the replicas
// deliver them. Writes its subsection of bench/RESULTS.md (bench/lifecycle-report.ts) and prints it.
import { fork, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { Webhook } from 'standardwebhooks'
import { startRedisServer } from '../src/redis-server.js'
import { createRedisKeys } from '../src/redis-keys.js'
import { createEventIds } from '../src/event-id.js'
import { createEventLog, type PendingEvent } from '../src/event-log.js'
import { createWebhookQueue } from '../src/webhook-queue.js'
import type { ReplicaSetup, Tally } from './webhooks-replica.js'
import { renderWebhooks, type Run } from './webhooks-report.js'
import { load, machine, resultsPath, writePart } from './lifecycle-report.js'

const int = (name: string, fallback: number): number => {
  const v = Number(process.env[name] ?? fallback)
  if (!Number.isInteger(v) || v < 1) throw new Error(`${name}: must be an integer >= 1`)
  return v
}
const EVENTS = int('BENCH_WEBHOOK_EVENTS', 10_000)
// As shipped a replica delivers about 4 events/s (see bench/README.md): fewer events for those runs.
const SHIPPED = int('BENCH_WEBHOOK_SHIPPED_EVENTS', Math.min(EVENTS, 200))
const PACED = int('BENCH_WEBHOOK_PACED_EVENTS', Math.min(EVENTS, 60))
const RATE = int('BENCH_WEBHOOK_RATE', 2)
/** The poll interval of the capacity runs: the poll no longer limits the rate. */
const FAST_POLL_MS = 1
const FAIL_SHARE = 0.1
const RETRY_DELAYS_MS = [100, 200, 400, 800]
/** Bounds one run: generous, the worker's poll interval may dominate. */
const RUN_DEADLINE_MS = int('BENCH_WEBHOOK_RUN_SECONDS', 1200) * 1000
const progress = (line: string): void => { process.stderr.write(`bench:webhooks: ${line}\n`) }

interface Receiver {
  url: string
  /** 2xx answers per stream id, latencies (append to arrival, ms), last arrival (performance.now()). */
  ok: Map<string, number>
  latencies: number[]
  failed: number
  invalid: number
  last: number
  failShare: number
  reset: () => void
  close: () => Promise<void>
}

async function startReceiver (secret: string): Promise<Receiver> {
  const wh = new Webhook(secret)
  const r: Receiver = {
    url: '',
    ok: new Map(),
    latencies: [],
    failed: 0,
    invalid: 0,
    last: 0,
    failShare: 0,
    reset () { r.ok = new Map(); r.latencies = []; r.failed = 0; r.invalid = 0; r.last = 0 },
    close: async () => { server.closeAllConnections(); await new Promise(resolve => server.close(resolve)) }
  }
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const headers: Record<string, string> = {}
      for (const [k, v] of Object.entries(req.headers)) if (typeof v === 'string') headers[k] = v
      try {
        wh.verify(Buffer.concat(chunks), headers)
      } catch {
        r.invalid++
        return res.writeHead(400).end()
      }
      if (r.failShare > 0 && Math.random() < r.failShare) {
        r.failed++
        return res.writeHead(500).end()
      }
      const arrived = Date.now()
      res.writeHead(204).end()
      // evt_<stream id>_<MAC>; the stream id's first part is Redis's clock when the event was appended.
      const streamId = /^evt_(\d+-\d+)_/.exec(headers['webhook-id'] ?? '')?.[1] ?? '?'
      r.ok.set(streamId, (r.ok.get(streamId) ?? 0) + 1)
      r.latencies.push(arrived - Number(streamId.split('-')[0]))
      r.last = performance.now()
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  r.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks`
  return r
}

const event = (i: number): PendingEvent => ({
  type: 'merchant.refreshed',
  merchantId: `bench-merchant-${String(i).padStart(6, '0')}`,
  occurredAt: Date.now(),
  data: { access_token_expires_at: new Date(Date.now() + 86_400_000).toISOString(), refresh_token_expires_at: new Date(Date.now() + 365 * 86_400_000).toISOString() }
})

async function main (): Promise<void> {
  const loadBefore = load()
  const server = await startRedisServer({ args: ['--save', '', '--appendonly', 'no'], label: 'bench-webhooks' })
  const redis = new Redis(server.url)
  const secretKey = randomBytes(32)
  const idKey = randomBytes(32)
  const receiver = await startReceiver(`whsec_${secretKey.toString('base64')}`)
  const keys = createRedisKeys('cybs:')
  const log = createEventLog(redis, keys, createEventIds([{ kid: 'k1', key: idKey }]), { webhooks: true })
  const queue = createWebhookQueue(redis, keys)
  const replicas = new Set<ChildProcess>()
  try {
    const append = async (from: number, n: number): Promise<string[]> => {
      const out: string[] = []
      for (let i = from; i < from + n; i += 100) {
        const results = await log.append(Array.from({ length: Math.min(100, from + n - i) }, (_, k) => event(i + k)))
        for (const r of results) {
          if (typeof r !== 'string') throw r
          out.push(r)
        }
      }
      return out
    }

    const startReplicas = async (count: number, options: ReplicaSetup['options']): Promise<ChildProcess[]> => {
      const setup: ReplicaSetup = { redisUrl: server.url, url: receiver.url, secret: secretKey.toString('base64'), idKey: idKey.toString('base64'), options }
      const started = Array.from({ length: count }, () => fork(new URL('./webhooks-replica.js', import.meta.url), [], { env: { ...process.env, BENCH_WEBHOOK_REPLICA: JSON.stringify(setup) }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }))
      for (const c of started) replicas.add(c)
      await Promise.all(started.map(async c => {
        const [m] = await Promise.race([once(c, 'message'), once(c, 'exit').then(() => { throw new Error('a replica exited before it was ready') })]) as [unknown]
        if (m !== 'ready') throw new Error('a replica did not start')
      }))
      return started
    }
    const stopReplicas = async (cs: ChildProcess[]): Promise<Tally[]> => await Promise.all(cs.map(async c => {
      const tally = once(c, 'message').then(([m]) => (m as { tally: Tally }).tally)
      const exited = once(c, 'exit')
      c.send('stop')
      const t = await tally
      await exited
      replicas.delete(c)
      return t
    }))

    const commandStats = async (): Promise<Map<string, number>> => {
      const counts = new Map<string, number>()
      for (const m of (await redis.info('commandstats')).matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) {
        if (m[1] !== 'info' && m[1] !== 'config|resetstat') counts.set(m[1], Number(m[2]))
      }
      return counts
    }

    const waitDelivered = async (ids: string[], started: number): Promise<void> => {
      for (;;) {
        if (ids.every(id => receiver.ok.has(id))) return
        if (performance.now() - started > RUN_DEADLINE_MS) throw new Error(`not every event was delivered within ${RUN_DEADLINE_MS / 1000} s`)
        await sleep(20)
      }
    }

    const run = async (label: string, spec: { replicas: number, events: number, paced?: boolean, failShare?: number, options?: ReplicaSetup['options'] }): Promise<Run> => {
      const options = spec.options ?? {}
      const n = spec.events
      progress(`${label}: ${n} events, ${spec.replicas} replica(s)`)
      receiver.reset()
      receiver.failShare = spec.failShare ?? 0
      const cs = await startReplicas(spec.replicas, options)
      let ids: string[]
      let appendS = 0
      let started: number
      if (spec.paced !== true) {
        const t0 = performance.now()
        ids = await append(0, n)
        appendS = (performance.now() - t0) / 1000
        await redis.config('RESETSTAT')
        started = performance.now()
        for (const c of cs) c.send('start')
      } else {
        await redis.config('RESETSTAT')
        for (const c of cs) c.send('start')
        started = performance.now()
        ids = []
        // 20 ms steps, each appending what the rate owes so far.
        for (let step = 1; ids.length < n; step++) {
          const owed = Math.min(n, Math.round(RATE * step / 50)) - ids.length
          if (owed > 0) ids.push(...await append(ids.length, owed))
          await sleep(Math.max(0, started + step * 20 - performance.now()))
        }
      }
      await waitDelivered(ids, started)
      const seconds = (receiver.last - started) / 1000
      const commands = await commandStats()
      const tallies = await stopReplicas(cs)
      await sleep(200) // a late duplicate would arrive by now
      const counts = ids.map(id => receiver.ok.get(id) ?? 0)
      const backlog = await queue.backlog()
      return {
        label,
        replicas: spec.replicas,
        events: n,
        paced: spec.paced === true ? RATE : undefined,
        failShare: receiver.failShare,
        options,
        appendS,
        seconds,
        latencies: receiver.latencies,
        commands,
        delivered: counts.filter(c => c >= 1).length,
        duplicates: counts.reduce((a, c) => a + Math.max(0, c - 1), 0),
        failed: receiver.failed,
        invalid: receiver.invalid,
        tallies,
        left: backlog.pending,
        dead: backlog.dead
      }
    }

    const runs: Run[] = []
    const fast = { pollMs: FAST_POLL_MS }
    runs.push(await run('as shipped, 1 replica, backlog', { replicas: 1, events: SHIPPED }))
    runs.push(await run('as shipped, 2 replicas, backlog', { replicas: 2, events: SHIPPED }))
    runs.push(await run(`as shipped, 1 replica, appended at ${RATE}/s`, { replicas: 1, events: PACED, paced: true }))
    runs.push(await run(`poll ${FAST_POLL_MS} ms, 1 replica, backlog`, { replicas: 1, events: EVENTS, options: fast }))
    runs.push(await run(`poll ${FAST_POLL_MS} ms, 2 replicas, backlog`, { replicas: 2, events: EVENTS, options: fast }))
    runs.push(await run(`poll ${FAST_POLL_MS} ms, 1 replica, backlog, receiver fails 10 %, retry delays ${RETRY_DELAYS_MS.join(', ')} ms`, { replicas: 1, events: EVENTS, failShare: FAIL_SHARE, options: { ...fast, retryDelaysMs: RETRY_DELAYS_MS } }))
    const section = renderWebhooks({ date: new Date().toISOString(), machine: await machine(redis), load: [loadBefore, load()], runs })
    writePart(resultsPath(), 'webhooks', section)
    process.stdout.write(section)
    const broken = runs.filter(r => r.delivered !== r.events || r.invalid > 0 || r.dead > 0)
    if (broken.length > 0) throw new Error(`not every event was delivered once with a valid signature: ${broken.map(r => r.label).join('; ')}`)
  } finally {
    for (const c of replicas) c.kill('SIGKILL')
    redis.disconnect()
    await receiver.close()
    await server.close()
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:webhooks: ${(err as Error).stack ?? String(err)}\n`)
  process.exitCode = 1
})
