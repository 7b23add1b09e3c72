// The one configuration schema: every environment variable of docs/configuration.md (plus a few operational
// knobs), validated once at boot. Nothing else in the code base reads process.env.
import envSchema from 'env-schema'
import { Type, type Static } from '@sinclair/typebox'
import {
  parseEncryptionKeys, parseInternalApiKeys, parseRedis, parseTrustProxy, parseUrl, parseWebhook, readTls,
  type EncryptionKey, type InternalApiKey, type Problems, type RedisConfig, type TlsMaterial
} from './config-parsers.js'
import { resolveSecretFiles } from './config-secret-files.js'

export type { EncryptionKey, HostPort, InternalApiKey, RedisConfig, RedisSecurity, TlsMaterial } from './config-parsers.js'

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
  REDIS_USERNAME: Type.Optional(Str({ maxLength: 256 })),
  REDIS_PASSWORD: Type.Optional(Str({ maxLength: 4096 })),
  REDIS_SENTINEL_USERNAME: Type.Optional(Str({ maxLength: 256 })),
  REDIS_SENTINEL_PASSWORD: Type.Optional(Str({ maxLength: 4096 })),
  REDIS_TLS: Type.Boolean({ default: false }),
  REDIS_CA_FILE: Type.Optional(Str()),
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
  // Operational knobs beyond the product contract (documented with the others in docs/configuration.md).
  RATE_LIMIT_MAX: Type.Integer({ minimum: 1, default: 120 }),
  RATE_LIMIT_WINDOW_SECONDS: Type.Integer({ minimum: 1, maximum: 3600, default: 60 }),
  INTERNAL_API_DOCS: Type.Boolean({ default: true }),
  AUDIT_SUMMARY_SECONDS: Type.Integer({ minimum: 0, maximum: 10, default: 10 }),
  SHUTDOWN_GRACE_MS: Type.Integer({ minimum: 100, maximum: 600000, default: 20000 }),
  TRUST_PROXY: Str({ default: 'false', maxLength: 2048 }),
  INTERNAL_PORT: Type.Optional(Type.Integer({ minimum: 0, maximum: 65535 })),
  INTERNAL_HOST: Type.Optional(Str()),
  ONBOARDING_LINK_TTL_SECONDS: Type.Integer({ minimum: 1, maximum: 2_592_000, default: 604_800 }),
  ONBOARDING_BROWSER_BINDING: Type.Union([Type.Literal('required'), Type.Literal('off')], { default: 'required' }),
  PARTNER_NAME: Type.Optional(Str({ maxLength: 100 })),
  PARTNER_PORTAL_URL: Type.Optional(Str()),
  STATE_MAX_PER_CLIENT: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 300 }),
  STATE_MAX_TOTAL: Type.Integer({ minimum: 1, maximum: 100_000_000, default: 100_000 }),
  REFRESH_TOKEN_RENEW_BEFORE_SECONDS: Type.Integer({ minimum: 1, maximum: 31_536_000, default: 2_592_000 }),
  KEEPALIVE_INTERVAL_MS: Type.Integer({ minimum: 100, maximum: 600_000, default: 5000 }),
  WEBHOOK_URL: Type.Optional(Str()),
  WEBHOOK_SECRET: Type.Optional(Str({ maxLength: 4096 })),
  TOKEN_CACHE_MAX_ENTRIES: Type.Integer({ minimum: 0, maximum: 10_000_000, default: 10_000 })
})
export type Env = Static<typeof EnvSchema>

/**
 * The variables the docs call secret (docs/configuration.md). Each may be given as NAME_FILE instead (the path of a file
 * holding the value); those names are not schema properties. A new secret is one more entry here.
 */
export const SECRET_VARIABLES = [
  'CYBS_CLIENT_SECRET',
  'CYBS_CLIENT_KEY_PASSPHRASE',
  'TOKEN_ENCRYPTION_KEYS',
  'INTERNAL_API_KEYS',
  'REDIS_URL',
  'REDIS_PASSWORD',
  'REDIS_SENTINEL_PASSWORD',
  'WEBHOOK_SECRET'
] as const satisfies ReadonlyArray<keyof Env>

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
    tls: TlsMaterial
  }
  encryptionKeys: EncryptionKey[]
  internalApiKeys: InternalApiKey[]
  onboarding: { successUrl?: string, failureUrl?: string, stateTtlSeconds: number }
  rateLimit: { max: number, windowSeconds: number }
  internalApiDocs: boolean
  /** Successful lookups are audited as a summary per caller and merchant this often; 0: a line each. */
  auditSummarySeconds: number
  shutdownGraceMs: number
  /** Fastify's trustProxy: false, a hop count, or the trusted proxy addresses/CIDRs. */
  trustProxy: false | number | string[]
  /** The second listener of the internal API, /metrics and /docs (INTERNAL_PORT). */
  internalListener?: { host: string, port: number }
  links: { ttlSeconds: number }
  browserBinding: 'required' | 'off'
  pages: { partnerName?: string, portalUrl?: string }
  stateLimits: { perClient: number, total: number }
  tokenCache: { maxEntries: number }
  keepAlive: { renewBeforeSeconds: number, intervalMs: number }
  /** Lifecycle events are POSTed here, signed with every secret (WEBHOOK_URL, WEBHOOK_SECRET). */
  webhook?: { url: string, secrets: Buffer[] }
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
        : name === 'LOG_LEVEL' || name === 'CYBS_ENVIRONMENT' || name === 'ONBOARDING_BROWSER_BINDING'
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
  if (usable('WEBHOOK_URL', 'WEBHOOK_SECRET')) parseWebhook(problems, raw.WEBHOOK_URL, raw.WEBHOOK_SECRET)
  const trust = get('TRUST_PROXY')
  if (trust !== undefined) parseTrustProxy(problems, trust)
  const redisVars = ['REDIS_URL', 'REDIS_SENTINELS', 'REDIS_SENTINEL_NAME', 'REDIS_CLUSTER_NODES', 'REDIS_USERNAME', 'REDIS_PASSWORD',
    'REDIS_SENTINEL_USERNAME', 'REDIS_SENTINEL_PASSWORD', 'REDIS_TLS', 'REDIS_CA_FILE'] as const
  if (usable(...redisVars)) {
    parseRedis(problems, { ...Object.fromEntries(redisVars.map(n => [n, raw[n]])), REDIS_TLS: raw.REDIS_TLS === 'true' })
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
export function loadConfig (rawEnv: Record<string, string | undefined>): Config {
  // Files first, so a secret read from one goes through the same checks as one given inline.
  const secrets = resolveSecretFiles(rawEnv, SECRET_VARIABLES)
  const env = secrets.env
  const validated = validateEnv(env)
  if (validated.env === undefined || secrets.problems.length > 0) {
    const schema = validated.env === undefined ? validated : { problems: [], flagged: new Set<string>() }
    const problems = [...secrets.problems, ...schema.problems.filter(p => !secrets.failed.has(p.slice(0, p.indexOf(':'))))]
    checkStructured(problems, env, new Set([...schema.flagged, ...secrets.failed]))
    throw new ConfigError(problems)
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
  const trustProxy = parseTrustProxy(problems, e.TRUST_PROXY)
  const portalUrl = e.PARTNER_PORTAL_URL === undefined ? undefined : parseUrl(problems, 'PARTNER_PORTAL_URL', e.PARTNER_PORTAL_URL, ['http:', 'https:'])
  const webhook = parseWebhook(problems, e.WEBHOOK_URL, e.WEBHOOK_SECRET)
  if (e.INTERNAL_PORT !== undefined && e.INTERNAL_PORT !== 0 && e.INTERNAL_PORT === e.PORT) problems.push('INTERNAL_PORT: must differ from PORT')

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
    trustProxy,
    ...(e.INTERNAL_PORT === undefined ? {} : { internalListener: { host: e.INTERNAL_HOST ?? e.HOST, port: e.INTERNAL_PORT } }),
    links: { ttlSeconds: e.ONBOARDING_LINK_TTL_SECONDS },
    browserBinding: e.ONBOARDING_BROWSER_BINDING,
    pages: { partnerName: e.PARTNER_NAME, portalUrl },
    stateLimits: { perClient: e.STATE_MAX_PER_CLIENT, total: e.STATE_MAX_TOTAL },
    tokenCache: { maxEntries: e.TOKEN_CACHE_MAX_ENTRIES },
    keepAlive: { renewBeforeSeconds: e.REFRESH_TOKEN_RENEW_BEFORE_SECONDS, intervalMs: e.KEEPALIVE_INTERVAL_MS },
    ...(webhook === undefined ? {} : { webhook })
  }
}

/** For a process's entry point: the configuration, or one line per problem and exit status 1. */
export function loadConfigOrExit (env: Record<string, string | undefined>): Config {
  try {
    return loadConfig(env)
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err
    for (const line of err.problems) process.stderr.write(`configuration error: ${line}\n`)
    process.exit(1)
  }
}
