// The scale benchmark's Redis deployments (a standalone server, or a 3-master Cluster built from
// redis-server processes, as test/helpers/redis-topologies.ts does) and what it reads of them:
// INFO figures summed over the masters, command counts since CONFIG RESETSTAT, MEMORY USAGE.
import { execFile } from 'node:child_process'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import { Redis } from 'ioredis'
import { freePort } from '../src/net-utils.js'
import { RedisServerError, startRedisServer, type RedisServer } from '../src/redis-server.js'
import { BenchError } from './settings.js'

const execFileP = promisify(execFile)
const NO_PERSISTENCE = ['--save', '', '--appendonly', 'no']

export interface Deployment {
  kind: 'standalone' | 'cluster'
  /** What the service is given: REDIS_URL, or REDIS_CLUSTER_NODES. */
  env: Record<string, string>
  /** One admin connection per master. */
  admins: Redis[]
  close: () => Promise<void>
}

// Not watched (children.watch): the run closes each deployment once measured; a server that dies
// before surfaces as the service's or the seeding's errors.
async function server (label: string, args: string[]): Promise<RedisServer> {
  try {
    return await startRedisServer({ label, args: [...NO_PERSISTENCE, ...args] })
  } catch (err) {
    throw err instanceof RedisServerError ? new BenchError(err.message) : err
  }
}

const admin = (port: number): Redis => {
  const c = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 1, lazyConnect: true })
  c.on('error', () => {})
  return c
}

export const infoField = (info: string, field: string): string | undefined => new RegExp(`^${field}:(.*)$`, 'm').exec(info)?.[1]?.trim()

export async function startStandalone (): Promise<Deployment> {
  const s = await server('scale-redis', [])
  const c = admin(s.port)
  return {
    kind: 'standalone',
    env: { REDIS_URL: s.url },
    admins: [c],
    close: async () => { c.disconnect(); await s.close() }
  }
}

/** Three masters, no replicas (redis-cli --cluster create), once every node says cluster_state:ok. */
export async function startCluster (masters = 3): Promise<Deployment> {
  const servers: RedisServer[] = []
  const admins: Redis[] = []
  const close = async (): Promise<void> => {
    for (const c of admins) c.disconnect()
    await Promise.all(servers.map(async s => await s.close()))
  }
  try {
    for (let i = 0; i < masters; i++) {
      // The bus port gets a free port of its own (port + 10000 may be taken or beyond 65535).
      const bus = await freePort()
      servers.push(await server(`scale-cluster${i}`, ['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '2000', '--cluster-port', String(bus)]))
    }
    const addrs = servers.map(s => `127.0.0.1:${s.port}`)
    await execFileP('redis-cli', ['--cluster', 'create', ...addrs, '--cluster-replicas', '0', '--cluster-yes'], { timeout: 60_000 }).catch((err: Error & { stdout?: string }) => {
      throw new BenchError(`redis-cli --cluster create failed (BENCH_SCALE_CLUSTER=0 skips the Cluster): ${err.message}\n${err.stdout ?? ''}`)
    })
    admins.push(...servers.map(s => admin(s.port)))
    const deadline = Date.now() + 30_000
    for (const c of admins) {
      for (;;) {
        const info = String(await c.call('CLUSTER', 'INFO').catch(() => ''))
        if (infoField(info, 'cluster_state') === 'ok' && infoField(info, 'cluster_known_nodes') === String(masters)) break
        if (Date.now() > deadline) throw new BenchError('the Cluster did not reach cluster_state:ok within 30 s')
        await sleep(100)
      }
    }
    return { kind: 'cluster', env: { REDIS_CLUSTER_NODES: addrs.join(',') }, admins, close }
  } catch (err) {
    await close()
    throw err
  }
}

/** A numeric INFO field summed over the masters. */
export async function infoSum (d: Deployment, section: string, field: string): Promise<number> {
  const values = await Promise.all(d.admins.map(async c => Number(infoField(await c.info(section), field) ?? NaN)))
  return values.reduce((a, b) => a + b, 0)
}

export async function resetStats (d: Deployment): Promise<void> {
  await Promise.all(d.admins.map(async c => await c.config('RESETSTAT')))
}

// Commands that are not the service's answer to what was measured: the measurement's own (left
// out), and a connection's upkeep, e.g. ioredis's periodic slot refresh on Cluster (shown apart).
const OWN = new Set(['config|resetstat', 'info'])
export const BACKGROUND = new Set(['cluster|slots', 'cluster|shards', 'cluster|nodes', 'cluster|info', 'client|setname', 'subscribe', 'ssubscribe', 'ping', 'hello', 'auth', 'select'])

/** Calls per command since the last resetStats, summed over the masters (the measurement's own left out). */
export async function commandCounts (d: Deployment): Promise<Map<string, number>> {
  const counts = new Map<string, number>()
  for (const c of d.admins) {
    for (const m of (await c.info('commandstats')).matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) {
      if (!OWN.has(m[1])) counts.set(m[1], (counts.get(m[1]) ?? 0) + Number(m[2]))
    }
  }
  return counts
}

/** MEMORY USAGE (SAMPLES 0: exact) of a key, on whichever master holds it (the others answer MOVED). */
export async function memoryUsage (d: Deployment, key: string): Promise<number> {
  for (const c of d.admins) {
    const n = await c.call('MEMORY', 'USAGE', key, 'SAMPLES', '0').catch(() => null)
    if (n !== null) return Number(n)
  }
  throw new BenchError(`MEMORY USAGE: no master holds ${key}`)
}

export const redisVersion = async (d: Deployment): Promise<string> => infoField(await d.admins[0].info('server'), 'redis_version') ?? 'unknown'
