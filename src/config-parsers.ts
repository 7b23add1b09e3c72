// The structured variables of the configuration, each parsed into what the service uses: URLs,
// key lists, the Redis topology and the mutual-TLS files. Every problem is pushed as one line
// naming the variable; no line ever quotes a secret.
import { readFileSync } from 'node:fs'
import { X509Certificate, createPrivateKey } from 'node:crypto'

export type Problems = string[]

export interface HostPort { host: string, port: number }
export type RedisConfig =
  | { mode: 'standalone', url: string }
  | { mode: 'sentinel', sentinels: HostPort[], name: string }
  | { mode: 'cluster', nodes: HostPort[] }

export interface EncryptionKey { kid: string, key: Buffer }
export interface InternalApiKey { caller: string, secret: string }
export interface TlsMaterial { cert?: string, key?: string, passphrase?: string, ca?: string }

export type CybsEnvironment = 'test' | 'production' | 'simulator'

const KID_PATTERN = /^[A-Za-z0-9_.-]{1,32}$/
const CALLER_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/
const MIN_SECRET_LENGTH = 32

export function parseUrl (problems: Problems, name: string, value: string, protocols: string[], bareBase = false): string {
  let url: URL
  try {
    url = new URL(value)
  } catch {
    problems.push(`${name}: must be an absolute URL`)
    return value
  }
  if (!protocols.includes(url.protocol)) {
    problems.push(`${name}: must use ${protocols.map(p => p.replace(':', '')).join(' or ')}`)
  }
  if (url.username !== '' || url.password !== '') problems.push(`${name}: must not carry credentials`)
  // A bare '?' or '#' leaves url.search and url.hash empty but stays in the href.
  if (bareBase && (value.includes('?') || value.includes('#'))) problems.push(`${name}: must not have a query string or fragment (paths are appended to it)`)
  return url.href
}

function parseHostPorts (problems: Problems, name: string, value: string): HostPort[] {
  const nodes: HostPort[] = []
  for (const item of value.split(',').map(s => s.trim())) {
    const m = /^(\[[0-9a-fA-F:]+\]|[^:\s]+):(\d{1,5})$/.exec(item)
    const port = m === null ? 0 : Number(m[2])
    if (m === null || port < 1 || port > 65535) {
      problems.push(`${name}: each entry must be host:port`)
      return []
    }
    nodes.push({ host: m[1].replace(/^\[|\]$/g, ''), port })
  }
  return nodes
}

export function parseEncryptionKeys (problems: Problems, value: string): EncryptionKey[] {
  const name = 'TOKEN_ENCRYPTION_KEYS'
  const keys: EncryptionKey[] = []
  for (const [i, item] of value.split(',').entries()) {
    const sep = item.indexOf(':')
    const kid = item.slice(0, sep).trim()
    const b64 = item.slice(sep + 1).trim()
    if (sep < 0 || !KID_PATTERN.test(kid)) {
      problems.push(`${name}: entry ${i + 1} must be kid:base64key with a kid of 1-32 [A-Za-z0-9_.-]`)
      continue
    }
    const key = /^[A-Za-z0-9+/_-]+={0,2}$/.test(b64) ? Buffer.from(b64, 'base64') : Buffer.alloc(0)
    if (key.length !== 32) {
      problems.push(`${name}: key "${kid}" must be 32 bytes, base64-encoded`)
      continue
    }
    if (keys.some(k => k.kid === kid)) {
      problems.push(`${name}: key id "${kid}" appears twice`)
      continue
    }
    keys.push({ kid, key })
  }
  return keys
}

export function parseInternalApiKeys (problems: Problems, value: string): InternalApiKey[] {
  const name = 'INTERNAL_API_KEYS'
  const keys: InternalApiKey[] = []
  for (const [i, item] of value.split(',').entries()) {
    const sep = item.indexOf(':')
    const caller = item.slice(0, sep).trim()
    const secret = item.slice(sep + 1).trim()
    if (sep < 0 || !CALLER_PATTERN.test(caller)) {
      problems.push(`${name}: entry ${i + 1} must be caller:secret with a caller of 1-64 [A-Za-z0-9_.-]`)
    } else if (secret.length < MIN_SECRET_LENGTH) {
      // Named by position, never by the caller field: a reversed entry would print the secret.
      problems.push(`${name}: entry ${i + 1} has a secret shorter than ${MIN_SECRET_LENGTH} characters`)
    } else if (keys.some(k => k.secret === secret)) {
      problems.push(`${name}: entry ${i + 1} repeats the secret of an earlier entry`)
    } else {
      keys.push({ caller, secret })
    }
  }
  return keys
}

function readPem (problems: Problems, name: string, path: string | undefined): string | undefined {
  if (path === undefined) return undefined
  try {
    return readFileSync(path, 'utf8')
  } catch (err) {
    problems.push(`${name}: cannot read file (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
    return undefined
  }
}

export interface TlsEnv {
  CYBS_ENVIRONMENT: CybsEnvironment
  CYBS_CLIENT_CERT_FILE?: string
  CYBS_CLIENT_KEY_FILE?: string
  CYBS_CLIENT_KEY_PASSPHRASE?: string
  CYBS_CA_FILE?: string
}

export function readTls (problems: Problems, env: TlsEnv): TlsMaterial {
  const mtlsRequired = env.CYBS_ENVIRONMENT !== 'simulator'
  for (const name of ['CYBS_CLIENT_CERT_FILE', 'CYBS_CLIENT_KEY_FILE'] as const) {
    if (env[name] === undefined && (mtlsRequired || env.CYBS_CLIENT_CERT_FILE !== undefined || env.CYBS_CLIENT_KEY_FILE !== undefined)) {
      problems.push(`${name}: required for mutual TLS${mtlsRequired ? ` when CYBS_ENVIRONMENT=${env.CYBS_ENVIRONMENT}` : ' (cert and key go together)'}`)
    }
  }
  const cert = readPem(problems, 'CYBS_CLIENT_CERT_FILE', env.CYBS_CLIENT_CERT_FILE)
  const key = readPem(problems, 'CYBS_CLIENT_KEY_FILE', env.CYBS_CLIENT_KEY_FILE)
  const ca = readPem(problems, 'CYBS_CA_FILE', env.CYBS_CA_FILE)
  const passphrase = env.CYBS_CLIENT_KEY_PASSPHRASE
  // Parse at boot so a wrong file or passphrase fails here, not on the first merchant's callback.
  if (cert !== undefined) {
    try { new X509Certificate(cert) } catch { problems.push('CYBS_CLIENT_CERT_FILE: not a PEM certificate') } // eslint-disable-line no-new
  }
  if (key !== undefined) {
    try { createPrivateKey({ key, passphrase }) } catch { problems.push('CYBS_CLIENT_KEY_FILE: not a PEM private key, or CYBS_CLIENT_KEY_PASSPHRASE does not open it') }
  }
  if (ca !== undefined && !ca.includes('-----BEGIN CERTIFICATE-----')) problems.push('CYBS_CA_FILE: not a PEM certificate bundle')
  return { cert, key, passphrase, ca }
}

export interface RedisEnv {
  REDIS_URL?: string
  REDIS_SENTINELS?: string
  REDIS_SENTINEL_NAME?: string
  REDIS_CLUSTER_NODES?: string
}

export function parseRedis (problems: Problems, e: RedisEnv): RedisConfig {
  if (e.REDIS_CLUSTER_NODES !== undefined) {
    return { mode: 'cluster', nodes: parseHostPorts(problems, 'REDIS_CLUSTER_NODES', e.REDIS_CLUSTER_NODES) }
  }
  if (e.REDIS_SENTINELS !== undefined) {
    if (e.REDIS_SENTINEL_NAME === undefined) problems.push('REDIS_SENTINEL_NAME: required with REDIS_SENTINELS')
    return { mode: 'sentinel', sentinels: parseHostPorts(problems, 'REDIS_SENTINELS', e.REDIS_SENTINELS), name: e.REDIS_SENTINEL_NAME ?? '' }
  }
  // REDIS_URL may hold a password, so its value is never echoed either.
  const url = e.REDIS_URL ?? 'redis://127.0.0.1:6379'
  if (!/^rediss?:\/\/[^\s]+$/.test(url)) problems.push('REDIS_URL: must be a redis:// or rediss:// URL')
  return { mode: 'standalone', url }
}
