// Private Redis Cluster and Sentinel deployments for tests: real redis-server processes, each on
// free loopback ports, in its own temporary directory, with no persistence.
//
// Every server runs under a small sh wrapper that holds a pipe from this process: the wrapper
// SIGKILLs its server (and removes its directory) when the pipe closes, that is on kill() in a
// teardown and also when the test process dies without running its teardowns (tap timeout, crash).
import { spawn, execFile, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import { Redis } from 'ioredis'
import { freePort, waitForPort } from '../../src/net-utils.js'

const execFileP = promisify(execFile)

interface Teardown { teardown: (fn: () => unknown) => void }

export const HOST = '127.0.0.1'

// $1 = directory to remove afterwards; the rest is the redis-server command line. fd 3 is the
// pipe from the test process: EOF on it (kill(), or the test process gone) kills the server.
// SIGPIPE is ignored and `wait` is silent: once this process is gone its output pipes are broken,
// and the wrapper must still get to the cleanup.
const WRAPPER = `
trap '' PIPE
dir="$1"; shift
exec 3<&0
redis-server "$@" </dev/null &
pid=$!
( read -r _ <&3; kill -9 "$pid" 2>/dev/null ) </dev/null &
watcher=$!
exec 3<&-
wait "$pid" 2>/dev/null
status=$?
kill "$watcher" 2>/dev/null
[ -n "$dir" ] && rm -rf -- "$dir"
exit "$status"
`

export interface RedisProcess {
  port: number
  dir: string
  /** SIGKILL the server and wait until its port is closed. Never throws. */
  kill: () => Promise<void>
  alive: () => boolean
  /** The server's log (stdout), last 16 KB. */
  output: () => string
}

interface LaunchOptions {
  /** redis-server arguments for a given port and directory (written files go in `dir`). */
  args: (port: number, dir: string) => string[]
  label: string
}

async function launchOnce (opts: LaunchOptions, port: number): Promise<RedisProcess | 'port_in_use'> {
  const dir = mkdtempSync(join(tmpdir(), `cybs-${opts.label}-`))
  const proc: ChildProcess = spawn('sh', ['-c', WRAPPER, 'sh', dir, ...opts.args(port, dir)], { stdio: ['pipe', 'pipe', 'pipe'] })
  let log = ''
  const append = (chunk: Buffer): void => { log = (log + chunk.toString()).slice(-16_384) }
  proc.stdout?.on('data', append)
  proc.stderr?.on('data', append)
  proc.stdin?.on('error', () => {})
  const exited = new Promise<void>(resolve => proc.once('exit', () => resolve()))
  const alive = (): boolean => proc.exitCode === null && proc.signalCode === null
  const kill = async (): Promise<void> => {
    try {
      if (alive()) {
        proc.stdin?.end()
        await Promise.race([exited, sleep(5000)])
        if (alive()) proc.kill('SIGKILL')
      }
      await waitForPort(port, false, { timeoutMs: 5000 }).catch(() => {})
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  }
  const server: RedisProcess = { port, dir, kill, alive, output: () => log }
  // "Running mode=…, port=N." is logged only once the listening socket is bound (a bind
  // failure aborts before it), so a foreign process on the port is never mistaken for ours.
  const bound = new RegExp(`Running mode=\\w+, port=${port}\\.`)
  const deadline = Date.now() + 15_000
  while (Date.now() < deadline) {
    if (!alive()) {
      await kill()
      if (/Address already in use/.test(log)) return 'port_in_use'
      throw new Error(`redis-server (${opts.label}) exited at start:\n${log}`)
    }
    if (bound.test(log)) {
      await waitForPort(port, true, { timeoutMs: 10_000 })
      return server
    }
    await sleep(20)
  }
  await kill()
  throw new Error(`redis-server (${opts.label}) did not start within 15 s:\n${log}`)
}

/** Starts one redis-server on a free port (retrying when the port was taken meanwhile); killed in teardown. */
export async function launchRedis (t: Teardown, opts: LaunchOptions): Promise<RedisProcess> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const server = await launchOnce(opts, await freePort())
    if (server !== 'port_in_use') {
      t.teardown(server.kill)
      return server
    }
  }
  throw new Error(`redis-server (${opts.label}): no free port after 5 attempts`)
}

const dataArgs = (port: number, dir: string): string[] =>
  ['--port', String(port), '--bind', HOST, '--save', '', '--appendonly', 'no', '--dir', dir]

/**
 * A direct connection for assertions, errors ignored. It reconnects (a promoted replica drops its
 * clients); disconnected in teardown, which runs before the servers' (teardowns run last-in first-out).
 */
export function adminClient (t: Teardown, port: number): Redis {
  const client = new Redis({ host: HOST, port, maxRetriesPerRequest: 1, connectTimeout: 2000, retryStrategy: () => 200, lazyConnect: true })
  client.on('error', () => {})
  t.teardown(() => { client.disconnect() })
  return client
}

/** Polls until `check` returns a value other than undefined (errors count as not yet); throws after timeoutMs. */
export async function until<T> (what: string, timeoutMs: number, check: () => Promise<T | undefined>, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let last: unknown
  for (;;) {
    try {
      const v = await check()
      if (v !== undefined) return v
    } catch (err) {
      last = err
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last === undefined ? '' : ` (last error: ${String(last)})`}`)
    await sleep(intervalMs)
  }
}

/** A field of an INFO section (`INFO replication` etc.). */
export function infoField (info: string, field: string): string | undefined {
  return new RegExp(`^${field}:(.*)$`, 'm').exec(info)?.[1]?.trim()
}

export interface TestCluster {
  nodes: RedisProcess[]
  /** One admin connection per node (same order as nodes). */
  clients: Redis[]
  /** `127.0.0.1:p1,127.0.0.1:p2,…` for REDIS_CLUSTER_NODES. */
  spec: string
}

/** n masters, no replicas, created with redis-cli --cluster create; resolves once every node says cluster_state:ok. */
export async function startCluster (t: Teardown, masters = 3): Promise<TestCluster> {
  const nodes: RedisProcess[] = []
  for (let i = 0; i < masters; i++) {
    // The cluster bus gets a free port of its own (by default it is port + 10000, which may be taken or beyond 65535).
    const busPort = await freePort()
    nodes.push(await launchRedis(t, {
      label: `cluster${i}`,
      args: (port, dir) => [...dataArgs(port, dir), '--cluster-enabled', 'yes', '--cluster-config-file', join(dir, 'nodes.conf'), '--cluster-node-timeout', '2000', '--cluster-port', String(busPort)]
    }))
  }
  const addrs = nodes.map(n => `${HOST}:${n.port}`)
  try {
    await execFileP('redis-cli', ['--cluster', 'create', ...addrs, '--cluster-replicas', '0', '--cluster-yes'], { timeout: 60_000 })
  } catch (err) {
    const e = err as { stdout?: string, stderr?: string }
    throw new Error(`redis-cli --cluster create failed: ${String(err)}\n${e.stdout ?? ''}\n${e.stderr ?? ''}`)
  }
  const clients = nodes.map(n => adminClient(t, n.port))
  for (const [i, c] of clients.entries()) {
    await until(`cluster_state:ok on ${addrs[i]}`, 30_000, async () => {
      const info = String(await c.call('CLUSTER', 'INFO'))
      return infoField(info, 'cluster_state') === 'ok' && infoField(info, 'cluster_known_nodes') === String(masters) ? true : undefined
    })
  }
  return { nodes, clients, spec: addrs.join(',') }
}

export interface TestSentinel {
  name: string
  master: RedisProcess
  replica: RedisProcess
  sentinel: RedisProcess
  masterClient: Redis
  replicaClient: Redis
  sentinelClient: Redis
  /** What the sentinel currently names as the master. */
  masterAddr: () => Promise<{ host: string, port: number }>
}

/** A master, one replica in sync with it, and one sentinel monitoring them (quorum 1). */
export async function startSentinel (t: Teardown, name = 'mymaster'): Promise<TestSentinel> {
  const master = await launchRedis(t, { label: 'master', args: dataArgs })
  const replica = await launchRedis(t, { label: 'replica', args: (port, dir) => [...dataArgs(port, dir), '--replicaof', HOST, String(master.port)] })
  const masterClient = adminClient(t, master.port)
  const replicaClient = adminClient(t, replica.port)
  await until('the replica to sync with the master', 30_000, async () =>
    infoField(await replicaClient.info('replication'), 'master_link_status') === 'up' ? true : undefined)

  const sentinel = await launchRedis(t, {
    label: 'sentinel',
    args: (port, dir) => {
      // Sentinel rewrites its configuration file, so it lives in the (writable) temp dir.
      const conf = join(dir, 'sentinel.conf')
      writeFileSync(conf, [
        `port ${port}`,
        `bind ${HOST}`,
        `dir ${dir}`,
        `sentinel monitor ${name} ${HOST} ${master.port} 1`,
        `sentinel down-after-milliseconds ${name} 1000`,
        `sentinel failover-timeout ${name} 3000`,
        ''
      ].join('\n'))
      return [conf, '--sentinel']
    }
  })
  const sentinelClient = adminClient(t, sentinel.port)
  const masterAddr = async (): Promise<{ host: string, port: number }> => {
    const [host, port] = await sentinelClient.call('SENTINEL', 'get-master-addr-by-name', name) as [string, string]
    return { host, port: Number(port) }
  }
  // The sentinel must know the replica (from the master's INFO) and be connected to it, or it could not fail over.
  await until('the sentinel to see the master and its replica', 30_000, async () => {
    const flat = (arr: string[]): Record<string, string> => Object.fromEntries(arr.flatMap((v, i) => i % 2 === 0 ? [[v, arr[i + 1]]] : []))
    const m = flat(await sentinelClient.call('SENTINEL', 'master', name) as string[])
    const replicas = (await sentinelClient.call('SENTINEL', 'replicas', name) as string[][]).map(flat)
    return m.flags === 'master' && replicas.some(r => r.port === String(replica.port) && r.flags === 'slave' && r['master-link-status'] === 'ok')
      ? true
      : undefined
  })
  return { name, master, replica, sentinel, masterClient, replicaClient, sentinelClient, masterAddr }
}
