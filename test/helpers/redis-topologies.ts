// Private Redis Cluster and Sentinel deployments for tests: real redis-server processes
// (src/redis-server.ts), each on free loopback ports, in its own temporary directory, with no
// persistence, and killed with the test process even when its teardowns do not run. Optionally
// with passwords (requirepass/masterauth, an ACL user, a Sentinel's own password) and TLS: a TLS
// port beside the plain one, which stays open for the tests' admin connections.
import { execFile } from 'node:child_process'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import { Redis } from 'ioredis'
import { freePort } from '../../src/net-utils.js'
import { startRedisServer } from '../../src/redis-server.js'

const execFileP = promisify(execFile)

interface Teardown { teardown: (fn: () => unknown) => void }

export const HOST = '127.0.0.1'

export interface RedisProcess {
  port: number
  /** The TLS port, when the server has one. */
  tlsPort?: number
  dir: string
  /** SIGKILL the server and wait until its port is closed. Never throws. */
  kill: () => Promise<void>
  alive: () => boolean
  /** The server's log (stdout), last 16 KB. */
  output: () => string
}

interface LaunchOptions {
  /** redis-server arguments beyond the port, address and directory. */
  args?: string[]
  /** A configuration file's contents (Sentinel needs one it can rewrite). */
  config?: string
  label: string
}

/**
 * PEM files for a server's TLS port (test/helpers/certs.ts makes them), and the client certificate
 * it presents to its peers: the cluster bus always verifies one, whatever tls-auth-clients says.
 */
export interface TlsFiles { certFile: string, keyFile: string, caFile: string, clientCertFile: string, clientKeyFile: string }

/** How the data nodes of a deployment authenticate clients, and whether they serve TLS. */
export interface NodeSecurity {
  /** requirepass (the default user) and masterauth. */
  password?: string
  /** An ACL user with every permission, beside the default user. */
  user?: { name: string, password: string }
  /** A TLS port on every server; replication and the cluster bus then use TLS too. */
  tls?: TlsFiles
}

/** Starts one redis-server on a free port (and a TLS port, with `tls`); killed in teardown. */
export async function launchRedis (t: Teardown, opts: LaunchOptions & { tls?: TlsFiles }): Promise<RedisProcess> {
  const tlsPort = opts.tls === undefined ? undefined : await freePort()
  const tlsArgs = opts.tls === undefined
    ? []
    : ['--tls-port', String(tlsPort), '--tls-cert-file', opts.tls.certFile, '--tls-key-file', opts.tls.keyFile,
        '--tls-ca-cert-file', opts.tls.caFile, '--tls-auth-clients', 'no', '--tls-replication', 'yes',
        '--tls-client-cert-file', opts.tls.clientCertFile, '--tls-client-key-file', opts.tls.clientKeyFile]
  const server = await startRedisServer({ label: opts.label, args: [...(opts.args ?? []), ...tlsArgs], config: opts.config })
  t.teardown(server.close)
  return { port: server.port, tlsPort, dir: server.dir, kill: server.close, alive: server.alive, output: server.output }
}

/** The port the service uses: the TLS one when there is one. */
export const servicePort = (p: RedisProcess): number => p.tlsPort ?? p.port

const NO_PERSISTENCE = ['--save', '', '--appendonly', 'no']

function authArgs (sec: NodeSecurity): string[] {
  return [
    ...(sec.password === undefined ? [] : ['--requirepass', sec.password, '--masterauth', sec.password]),
    ...(sec.user === undefined ? [] : ['--user', sec.user.name, 'on', `>${sec.user.password}`, '~*', '&*', '+@all'])
  ]
}

/**
 * A direct connection for assertions (on the plain port, as the default user), errors ignored. It
 * reconnects (a promoted replica drops its clients); disconnected in teardown, which runs before
 * the servers' (teardowns run last-in first-out).
 */
export function adminClient (t: Teardown, port: number, password?: string): Redis {
  const client = new Redis({ host: HOST, port, password, maxRetriesPerRequest: 1, connectTimeout: 2000, retryStrategy: () => 200, lazyConnect: true })
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
  /** The same with the TLS ports, when the nodes serve TLS. */
  tlsSpec?: string
}

/**
 * n masters, no replicas, created with redis-cli --cluster create; resolves once every node says cluster_state:ok.
 * With TLS the bus uses it too, and a node names its peers' TLS ports (CLUSTER SLOTS, MOVED) to TLS clients only.
 */
export async function startCluster (t: Teardown, masters = 3, sec: NodeSecurity = {}): Promise<TestCluster> {
  const nodes: RedisProcess[] = []
  for (let i = 0; i < masters; i++) {
    // The cluster bus gets a free port of its own (by default it is port + 10000, which may be taken or beyond 65535).
    const busPort = await freePort()
    nodes.push(await launchRedis(t, {
      label: `cluster${i}`,
      args: [...NO_PERSISTENCE, '--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '2000', '--cluster-port', String(busPort),
        ...authArgs(sec), ...(sec.tls === undefined ? [] : ['--tls-cluster', 'yes'])],
      tls: sec.tls
    }))
  }
  const addrs = nodes.map(n => `${HOST}:${n.port}`)
  try {
    // REDISCLI_AUTH rather than -a: the password stays off the command line.
    const env = sec.password === undefined ? process.env : { ...process.env, REDISCLI_AUTH: sec.password }
    await execFileP('redis-cli', ['--cluster', 'create', ...addrs, '--cluster-replicas', '0', '--cluster-yes'], { timeout: 60_000, env })
  } catch (err) {
    const e = err as { stdout?: string, stderr?: string }
    throw new Error(`redis-cli --cluster create failed: ${String(err)}\n${e.stdout ?? ''}\n${e.stderr ?? ''}`)
  }
  const clients = nodes.map(n => adminClient(t, n.port, sec.password))
  for (const [i, c] of clients.entries()) {
    await until(`cluster_state:ok on ${addrs[i]}`, 30_000, async () => {
      const info = String(await c.call('CLUSTER', 'INFO'))
      return infoField(info, 'cluster_state') === 'ok' && infoField(info, 'cluster_known_nodes') === String(masters) ? true : undefined
    })
  }
  const tlsSpec = sec.tls === undefined ? undefined : nodes.map(n => `${HOST}:${servicePort(n)}`).join(',')
  return { nodes, clients, spec: addrs.join(','), tlsSpec }
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

export interface SentinelOptions {
  /** The master name; mymaster by default. */
  name?: string
  /** The data nodes' passwords and TLS; with TLS the sentinel also serves it and reaches them through it. */
  data?: NodeSecurity
  /** The sentinel's own password (requirepass in sentinel.conf), and an ACL user of its own. */
  sentinel?: { password?: string, user?: { name: string, password: string } }
}

/** A master, one replica in sync with it, and one sentinel monitoring them (quorum 1). */
export async function startSentinel (t: Teardown, opts: SentinelOptions = {}): Promise<TestSentinel> {
  const name = opts.name ?? 'mymaster'
  const data = opts.data ?? {}
  const own = opts.sentinel ?? {}
  const master = await launchRedis(t, { label: 'master', args: [...NO_PERSISTENCE, ...authArgs(data)], tls: data.tls })
  // With TLS the replica replicates over it, and announces its TLS port (so the sentinel names that one).
  const replica = await launchRedis(t, { label: 'replica', args: [...NO_PERSISTENCE, ...authArgs(data), '--replicaof', HOST, String(servicePort(master))], tls: data.tls })
  const masterClient = adminClient(t, master.port, data.password)
  const replicaClient = adminClient(t, replica.port, data.password)
  await until('the replica to sync with the master', 30_000, async () =>
    infoField(await replicaClient.info('replication'), 'master_link_status') === 'up' ? true : undefined)

  const sentinel = await launchRedis(t, {
    label: 'sentinel',
    config: [
      `sentinel monitor ${name} ${HOST} ${servicePort(master)} 1`,
      `sentinel down-after-milliseconds ${name} 1000`,
      `sentinel failover-timeout ${name} 3000`,
      ...(data.password === undefined ? [] : [`sentinel auth-pass ${name} ${data.password}`]),
      ...(own.password === undefined ? [] : [`requirepass ${own.password}`]),
      ...(own.user === undefined ? [] : [`user ${own.user.name} on >${own.user.password} allchannels +@all`]),
      ''
    ].join('\n'),
    args: ['--sentinel'],
    tls: data.tls
  })
  const sentinelClient = adminClient(t, sentinel.port, own.password)
  const masterAddr = async (): Promise<{ host: string, port: number }> => {
    const [host, port] = await sentinelClient.call('SENTINEL', 'get-master-addr-by-name', name) as [string, string]
    return { host, port: Number(port) }
  }
  // The sentinel must know the replica (from the master's INFO) and be connected to it, or it could not fail over.
  await until('the sentinel to see the master and its replica', 30_000, async () => {
    const flat = (arr: string[]): Record<string, string> => Object.fromEntries(arr.flatMap((v, i) => i % 2 === 0 ? [[v, arr[i + 1]]] : []))
    const m = flat(await sentinelClient.call('SENTINEL', 'master', name) as string[])
    const replicas = (await sentinelClient.call('SENTINEL', 'replicas', name) as string[][]).map(flat)
    return m.flags === 'master' && replicas.some(r => r.port === String(servicePort(replica)) && r.flags === 'slave' && r['master-link-status'] === 'ok')
      ? true
      : undefined
  })
  return { name, master, replica, sentinel, masterClient, replicaClient, sentinelClient, masterAddr }
}
