// The one configuration schema: every environment variable of SPEC §1 (plus a few operational
// knobs), validated once at boot. Nothing else in the code base reads process.env.
import { readFileSync } from 'node:fs'
import { X509Certificate, createPrivateKey } from 'node:crypto'
import envSchema from 'env-schema'
import { Type, type Static } from '@sinclair/typebox'

const Str = (opts: Record<string, unknown> = {}) => Type.String({ minLength: 1, ...opts })

export const EnvSchema = Type.Object({
  NODE_ENV: Type.Optional(Type.String()),
  HOST: Str({ default: '127.0.0.1' }),
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 3000 }),
  LOG_LEVEL: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map(l => Type.Literal(l)), { default: 'info' }),
  PUBLIC_BASE_URL: Str({ default: 'http://127.0.0.1:3000' }),
  REDIS_URL: Str({ default: 'redis://127.0.0.1:6379' }),
  REDIS_SENTINELS: Type.Optional(Str()),
  REDIS_SENTINEL_NAME: Type.Optional(Str()),
  REDIS_CLUSTER_NODES: Type.Optional(Str()),
  REDIS_KEY_PREFIX: Str({ default: 'cybs:', maxLength: 64, pattern: '^[A-Za-z0-9_.:-]+$' }),
  CYBS_ENVIRONMENT: Type.Union([Type.Literal('test'), Type.Literal('production'), Type.Literal('simulator')]),
  CYBS_AUTHORIZE_URL: Type.Optional(Str()),
  CYBS_TOKEN_URL: Type.Optional(Str()),
  CYBS_CLIENT_ID: Str({ maxLength: 256 }),
  CYBS_CLIENT_SECRET: Str({ maxLength: 1024 }),
  CYBS_CLIENT_CERT_FILE: Type.Optional(Str()),
  CYBS_CLIENT_KEY_FILE: Type.Optional(Str()),
  CYBS_CLIENT_KEY_PASSPHRASE: Type.Optional(Str()),
  CYBS_CA_FILE: Type.Optional(Str()),
  CYBS_REDIRECT_URL: Type.Optional(Str()),
  TOKEN_ENCRYPTION_KEYS: Str(),
  INTERNAL_API_KEYS: Str(),
  ONBOARDING_SUCCESS_URL: Type.Optional(Str()),
  ONBOARDING_FAILURE_URL: Type.Optional(Str()),
  STATE_TTL_SECONDS: Type.Integer({ minimum: 1, maximum: 3600, default: 600 }),
  CYBS_TIMEOUT_MS: Type.Integer({ minimum: 100, maximum: 120000, default: 10000 }),
  // Operational knobs beyond SPEC §1 (documented in the README's environment reference).
  RATE_LIMIT_MAX: Type.Integer({ minimum: 1, default: 30 }),
  RATE_LIMIT_WINDOW_SECONDS: Type.Integer({ minimum: 1, maximum: 3600, default: 60 }),
  INTERNAL_API_DOCS: Type.Boolean({ default: true }),
  AUDIT_SUMMARY_SECONDS: Type.Integer({ minimum: 0, maximum: 3600, default: 10 }),
  SHUTDOWN_GRACE_MS: Type.Integer({ minimum: 100, maximum: 600000, default: 20000 }),
  TRUST_PROXY: Type.Boolean({ default: false })
})
export type Env = Static<typeof EnvSchema>

export interface HostPort { host: string, port: number }
export type RedisConfig =
  | { mode: 'standalone', url: string }
  | { mode: 'sentinel', sentinels: HostPort[], name: string }
  | { mode: 'cluster', nodes: HostPort[] }

export interface EncryptionKey { kid: string, key: Buffer }
export interface InternalApiKey { caller: string, secret: string }

export interface Config {
  host: string
  port: number
  logLevel: string
  publicBaseUrl: string
  redis: RedisConfig
  redisKeyPrefix: string
  cybs: {
    environment: 'test' | 'production' | 'simulator'
    authorizeUrl: string
    tokenUrl: string
    clientId: string
    clientSecret: string
    redirectUrl: string
    timeoutMs: number
    tls: { cert?: string, key?: string, passphrase?: string, ca?: string }
  }
  encryptionKeys: EncryptionKey[]
  internalApiKeys: InternalApiKey[]
  onboarding: { successUrl?: string, failureUrl?: string, stateTtlSeconds: number }
  rateLimit: { max: number, windowSeconds: number }
  internalApiDocs: boolean
  /** Successful lookups are audited as a summary per caller and merchant this often; 0: a line each. */
  auditSummarySeconds: number
  shutdownGraceMs: number
  trustProxy: boolean
}

export const CYBS_URLS = {
  test: {
    authorize: 'https://businesscentertest.cybersource.com/ebc2/oauth/authorize',
    token: 'https://api-matest.cybersource.com/oauth2/v3/token'
  },
  production: {
    authorize: 'https://businesscenter.cybersource.com/ebc2/oauth/authorize',
    token: 'https://api-ma.cybersource.com/oauth2/v3/token'
  },
  simulator: {
    authorize: 'http://127.0.0.1:4010/ebc2/oauth/authorize',
    token: 'http://127.0.0.1:4010/oauth2/v3/token'
  }
} as const

/** Boot failure: one line per problem, each naming the variable and never its value. */
export class ConfigError extends Error {
  constructor (readonly problems: string[]) {
    super(`invalid configuration:\n${problems.join('\n')}`)
    this.name = 'ConfigError'
  }
}

export const ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/
const KID_PATTERN = /^[A-Za-z0-9_.-]{1,32}$/
const CALLER_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/
const MIN_SECRET_LENGTH = 32

type Problems = string[]

function parseUrl (problems: Problems, name: string, value: string, protocols: string[], bareBase = false): string {
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

function parseEncryptionKeys (problems: Problems, value: string): EncryptionKey[] {
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

function parseInternalApiKeys (problems: Problems, value: string): InternalApiKey[] {
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

type TlsEnv = Pick<Env, 'CYBS_ENVIRONMENT' | 'CYBS_CLIENT_CERT_FILE' | 'CYBS_CLIENT_KEY_FILE' | 'CYBS_CLIENT_KEY_PASSPHRASE' | 'CYBS_CA_FILE'>

function readTls (problems: Problems, env: TlsEnv): Config['cybs']['tls'] {
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

type RedisEnv = Pick<Env, 'REDIS_SENTINELS' | 'REDIS_SENTINEL_NAME' | 'REDIS_CLUSTER_NODES'> & { REDIS_URL?: string }

function parseRedis (problems: Problems, e: RedisEnv): RedisConfig {
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

/** Schema check; on failure, the problems and the names of the variables they concern. */
function validateEnv (env: Record<string, string | undefined>): { env: Env } | { env: undefined, problems: Problems, flagged: Set<string> } {
  try {
    return { env: envSchema<Env>({ schema: structuredClone(EnvSchema), data: { ...env }, env: false }) }
  } catch (err) {
    const errors = (err as { errors?: Array<{ instancePath: string, keyword: string, message?: string, params: Record<string, unknown> }> }).errors ?? []
    const lines = new Map<string, string>()
    for (const e of errors) {
      const name = e.keyword === 'required' ? String(e.params.missingProperty) : e.instancePath.replace(/^\//, '')
      if (lines.has(name)) continue
      const message = e.keyword === 'required'
        ? 'is required'
        : name === 'LOG_LEVEL' || name === 'CYBS_ENVIRONMENT'
          ? `must be one of ${((EnvSchema.properties[name].anyOf) as Array<{ const: string }>).map(s => s.const).join(', ')}`
          : (e.message ?? 'is invalid')
      lines.set(name, `${name}: ${message}`)
    }
    return { env: undefined, problems: [...lines.values()], flagged: new Set(lines.keys()) }
  }
}

// After a schema failure, the structured variables that passed the schema are still checked,
// so one failed start lists every problem instead of revealing them one run at a time.
function checkStructured (problems: Problems, raw: Record<string, string | undefined>, flagged: Set<string>): void {
  const usable = (...names: string[]): boolean => names.every(n => !flagged.has(n))
  const get = (name: string): string | undefined => flagged.has(name) ? undefined : raw[name]
  const base = get('PUBLIC_BASE_URL')
  if (base !== undefined) parseUrl(problems, 'PUBLIC_BASE_URL', base, ['http:', 'https:'], true)
  if (usable('REDIS_URL', 'REDIS_SENTINELS', 'REDIS_SENTINEL_NAME', 'REDIS_CLUSTER_NODES')) {
    parseRedis(problems, { REDIS_URL: raw.REDIS_URL, REDIS_SENTINELS: raw.REDIS_SENTINELS, REDIS_SENTINEL_NAME: raw.REDIS_SENTINEL_NAME, REDIS_CLUSTER_NODES: raw.REDIS_CLUSTER_NODES })
  }
  const keys = get('TOKEN_ENCRYPTION_KEYS')
  if (keys !== undefined) parseEncryptionKeys(problems, keys)
  const apiKeys = get('INTERNAL_API_KEYS')
  if (apiKeys !== undefined) parseInternalApiKeys(problems, apiKeys)
  const environment = get('CYBS_ENVIRONMENT') as Env['CYBS_ENVIRONMENT'] | undefined
  if (environment !== undefined && usable('CYBS_CLIENT_CERT_FILE', 'CYBS_CLIENT_KEY_FILE', 'CYBS_CLIENT_KEY_PASSPHRASE', 'CYBS_CA_FILE')) {
    readTls(problems, { CYBS_ENVIRONMENT: environment, CYBS_CLIENT_CERT_FILE: raw.CYBS_CLIENT_CERT_FILE, CYBS_CLIENT_KEY_FILE: raw.CYBS_CLIENT_KEY_FILE, CYBS_CLIENT_KEY_PASSPHRASE: raw.CYBS_CLIENT_KEY_PASSPHRASE, CYBS_CA_FILE: raw.CYBS_CA_FILE })
  }
}

/** Validate an environment (process.env in production, a plain object in tests). */
export function loadConfig (env: Record<string, string | undefined>): Config {
  const validated = validateEnv(env)
  if (validated.env === undefined) {
    checkStructured(validated.problems, env, validated.flagged)
    throw new ConfigError(validated.problems)
  }
  const e = validated.env
  const problems: Problems = []

  const publicBaseUrl = parseUrl(problems, 'PUBLIC_BASE_URL', e.PUBLIC_BASE_URL, ['http:', 'https:'], true).replace(/\/+$/, '')
  const upstreamProtocols = e.CYBS_ENVIRONMENT === 'simulator' ? ['http:', 'https:'] : ['https:']
  const defaults = CYBS_URLS[e.CYBS_ENVIRONMENT]
  const authorizeUrl = parseUrl(problems, 'CYBS_AUTHORIZE_URL', e.CYBS_AUTHORIZE_URL ?? defaults.authorize, upstreamProtocols)
  const tokenUrl = parseUrl(problems, 'CYBS_TOKEN_URL', e.CYBS_TOKEN_URL ?? defaults.token, upstreamProtocols)
  const redirectUrl = e.CYBS_REDIRECT_URL === undefined
    ? `${publicBaseUrl}/oauth/callback`
    : parseUrl(problems, 'CYBS_REDIRECT_URL', e.CYBS_REDIRECT_URL, ['http:', 'https:'])
  const successUrl = e.ONBOARDING_SUCCESS_URL === undefined ? undefined : parseUrl(problems, 'ONBOARDING_SUCCESS_URL', e.ONBOARDING_SUCCESS_URL, ['http:', 'https:'])
  const failureUrl = e.ONBOARDING_FAILURE_URL === undefined ? undefined : parseUrl(problems, 'ONBOARDING_FAILURE_URL', e.ONBOARDING_FAILURE_URL, ['http:', 'https:'])

  const redis = parseRedis(problems, e)

  const encryptionKeys = parseEncryptionKeys(problems, e.TOKEN_ENCRYPTION_KEYS)
  const internalApiKeys = parseInternalApiKeys(problems, e.INTERNAL_API_KEYS)
  const tls = readTls(problems, e)

  if (problems.length > 0) throw new ConfigError(problems)
  return {
    host: e.HOST,
    port: e.PORT,
    logLevel: e.LOG_LEVEL,
    publicBaseUrl,
    redis,
    redisKeyPrefix: e.REDIS_KEY_PREFIX,
    cybs: {
      environment: e.CYBS_ENVIRONMENT,
      authorizeUrl,
      tokenUrl,
      clientId: e.CYBS_CLIENT_ID,
      clientSecret: e.CYBS_CLIENT_SECRET,
      redirectUrl,
      timeoutMs: e.CYBS_TIMEOUT_MS,
      tls
    },
    encryptionKeys,
    internalApiKeys,
    onboarding: { successUrl, failureUrl, stateTtlSeconds: e.STATE_TTL_SECONDS },
    rateLimit: { max: e.RATE_LIMIT_MAX, windowSeconds: e.RATE_LIMIT_WINDOW_SECONDS },
    internalApiDocs: e.INTERNAL_API_DOCS,
    auditSummarySeconds: e.AUDIT_SUMMARY_SECONDS,
    shutdownGraceMs: e.SHUTDOWN_GRACE_MS,
    trustProxy: e.TRUST_PROXY
  }
}
