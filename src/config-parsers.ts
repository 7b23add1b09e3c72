// The structured variables of the configuration, each parsed into what the service uses: URLs,
// key lists, the Redis topology and the mutual-TLS files. Every problem is pushed as one line
// naming the variable; no line ever quotes a secret.
import { readFileSync } from 'node:fs'
import { isIP } from 'node:net'
import { X509Certificate, createPrivateKey } from 'node:crypto'

export type Problems = string[]

export interface HostPort { host: string, port: number }
/** Credentials and TLS for the data nodes; a key is present only when it applies. */
export interface RedisSecurity {
  username?: string
  password?: string
  /** Present when the connections use TLS; `ca` is added to the system roots. */
  tls?: { ca?: string }
}
export type RedisConfig =
  | { mode: 'standalone', url: string } & RedisSecurity
  | { mode: 'sentinel', sentinels: HostPort[], name: string, sentinelUsername?: string, sentinelPassword?: string } & RedisSecurity
  | { mode: 'cluster', nodes: HostPort[] } & RedisSecurity

export interface EncryptionKey { kid: string, key: Buffer }
export interface InternalApiKey { caller: string, secret: string }
export interface TlsMaterial { cert?: string, key?: string, passphrase?: string, ca?: string }

export type CybsEnvironment = 'test' | 'production' | 'simulator'

/** No '.': it separates the parts of a sealed value and of an encryption envelope. */
export const KID_PATTERN = /^[A-Za-z0-9_-]{1,32}$/
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

/**
 * TRUST_PROXY: `false`; `true`, which means one hop (the address the nearest proxy saw: trusting
 * every hop would let a client choose its rate-limit bucket with its own X-Forwarded-For); a hop
 * count; or a comma list of trusted proxy addresses and CIDRs.
 */
export function parseTrustProxy (problems: Problems, value: string): false | number | string[] {
  const v = value.trim()
  if (v === 'false' || v === '0') return false
  if (v === 'true') return 1
  if (/^[0-9]{1,2}$/.test(v)) return Number(v)
  const entries = v.split(',').map(s => s.trim())
  const bad = entries.filter(entry => {
    const [address, bits, ...rest] = entry.split('/')
    const family = isIP(address)
    if (family === 0 || rest.length > 0) return true
    if (bits === undefined) return false
    return !/^[0-9]{1,3}$/.test(bits) || Number(bits) > (family === 4 ? 32 : 128)
  })
  if (bad.length > 0) problems.push(`TRUST_PROXY: must be false, true, a hop count (0-99) or a comma list of IP addresses/CIDRs (${bad.length} invalid)`)
  return entries
}

/** WEBHOOK_URL and WEBHOOK_SECRET: both or neither; each secret `whsec_` + base64 of 24–64 bytes. */
export function parseWebhook (problems: Problems, url: string | undefined, secret: string | undefined): { url: string, secrets: Buffer[] } | undefined {
  if (url === undefined && secret === undefined) return undefined
  if (url === undefined || secret === undefined) {
    problems.push(url === undefined ? 'WEBHOOK_URL: is required when WEBHOOK_SECRET is set' : 'WEBHOOK_SECRET: is required when WEBHOOK_URL is set')
    return undefined
  }
  const parsed = parseUrl(problems, 'WEBHOOK_URL', url, ['http:', 'https:'])
  const secrets = secret.split(',').map(s => s.trim())
  const keys = secrets.map(s => /^whsec_[A-Za-z0-9+/]+={0,2}$/.test(s) ? Buffer.from(s.slice('whsec_'.length), 'base64') : undefined)
  const bad = keys.filter(k => k === undefined || k.length < 24 || k.length > 64).length
  if (bad > 0) problems.push(`WEBHOOK_SECRET: each secret must be whsec_ followed by the base64 of 24 to 64 random bytes (${bad} invalid)`)
  return { url: parsed, secrets: keys.flatMap(k => k === undefined ? [] : [k]) }
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
  REDIS_USERNAME?: string
  REDIS_PASSWORD?: string
  REDIS_SENTINEL_USERNAME?: string
  REDIS_SENTINEL_PASSWORD?: string
  REDIS_TLS?: boolean
  REDIS_CA_FILE?: string
}

/** The keys whose value is defined (a config object without `key: undefined` entries). */
function defined<T extends object> (o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T
}

function readRedisCa (problems: Problems, path: string | undefined): string | undefined {
  const ca = readPem(problems, 'REDIS_CA_FILE', path)
  if (ca === undefined) return undefined
  try {
    if (!ca.includes('-----BEGIN CERTIFICATE-----')) throw new Error('no certificate')
    new X509Certificate(ca) // eslint-disable-line no-new
  } catch {
    problems.push('REDIS_CA_FILE: not a PEM certificate bundle')
  }
  return ca
}

/** Whether the URL carries a user or a password; never throws (a malformed URL is reported elsewhere). */
function urlHasCredentials (url: string): boolean {
  try {
    const u = new URL(url)
    return u.username !== '' || u.password !== ''
  } catch {
    return false
  }
}

export function parseRedis (problems: Problems, e: RedisEnv): RedisConfig {
  const mode = e.REDIS_CLUSTER_NODES !== undefined ? 'cluster' : e.REDIS_SENTINELS !== undefined ? 'sentinel' : 'standalone'
  // A username alone would send AUTH without a password; a user with `nopass` accepts any.
  if (e.REDIS_USERNAME !== undefined && e.REDIS_PASSWORD === undefined) problems.push('REDIS_USERNAME: requires REDIS_PASSWORD')
  if (e.REDIS_SENTINELS === undefined) {
    for (const name of ['REDIS_SENTINEL_USERNAME', 'REDIS_SENTINEL_PASSWORD'] as const) {
      if (e[name] !== undefined) problems.push(`${name}: only used with REDIS_SENTINELS`)
    }
  } else if (e.REDIS_SENTINEL_USERNAME !== undefined && e.REDIS_SENTINEL_PASSWORD === undefined) {
    problems.push('REDIS_SENTINEL_USERNAME: requires REDIS_SENTINEL_PASSWORD')
  }
  const before = problems.length
  const ca = readRedisCa(problems, e.REDIS_CA_FILE)
  // A CA file is only used with TLS; one line about it is enough.
  const caRead = ca !== undefined && problems.length === before
  const caUnused = (tls: boolean): boolean => caRead && !tls
  const security = (useTls: boolean): RedisSecurity => defined({
    username: e.REDIS_USERNAME,
    password: e.REDIS_PASSWORD,
    tls: useTls ? defined({ ca }) : undefined
  })

  if (mode === 'cluster') {
    if (caUnused(e.REDIS_TLS === true)) problems.push('REDIS_CA_FILE: only used with REDIS_TLS=true')
    return { mode, nodes: parseHostPorts(problems, 'REDIS_CLUSTER_NODES', e.REDIS_CLUSTER_NODES ?? ''), ...security(e.REDIS_TLS === true) }
  }
  if (mode === 'sentinel') {
    if (e.REDIS_SENTINEL_NAME === undefined) problems.push('REDIS_SENTINEL_NAME: required with REDIS_SENTINELS')
    if (caUnused(e.REDIS_TLS === true)) problems.push('REDIS_CA_FILE: only used with REDIS_TLS=true')
    return {
      mode,
      sentinels: parseHostPorts(problems, 'REDIS_SENTINELS', e.REDIS_SENTINELS ?? ''),
      name: e.REDIS_SENTINEL_NAME ?? '',
      ...defined({ sentinelUsername: e.REDIS_SENTINEL_USERNAME, sentinelPassword: e.REDIS_SENTINEL_PASSWORD }),
      ...security(e.REDIS_TLS === true)
    }
  }
  // REDIS_URL may hold a password, so its value is never echoed either.
  const url = e.REDIS_URL ?? 'redis://127.0.0.1:6379'
  if (!/^rediss?:\/\/[^\s]+$/.test(url)) problems.push('REDIS_URL: must be a redis:// or rediss:// URL')
  // Standalone: the scheme decides TLS, and the password lives in one place only.
  const tls = url.startsWith('rediss://')
  if (e.REDIS_TLS === true && !tls) problems.push('REDIS_TLS: true needs a rediss:// REDIS_URL for a standalone Redis (the scheme decides)')
  if (caUnused(tls)) problems.push('REDIS_CA_FILE: only used with TLS (a rediss:// REDIS_URL)')
  if (urlHasCredentials(url)) {
    for (const name of ['REDIS_USERNAME', 'REDIS_PASSWORD'] as const) {
      if (e[name] !== undefined) problems.push(`${name}: REDIS_URL carries credentials already; give them in one place`)
    }
  }
  return { mode, url, ...security(tls) }
}
