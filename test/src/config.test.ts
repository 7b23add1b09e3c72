import t, { type Test } from 'tap'
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ConfigError, EnvSchema, SECRET_VARIABLES, loadConfig, type Config } from '../../src/config.js'

type Env = Record<string, string | undefined>

// Secret values are random per run and distinctive, so a leak cannot be a coincidence.
const KEY_A = randomBytes(32).toString('base64')
const KEY_B = randomBytes(32).toString('base64')
const CLIENT_SECRET = `client-secret-${randomBytes(12).toString('hex')}`
const API_SECRET_1 = `api-secret-one-${randomBytes(16).toString('hex')}`
const API_SECRET_2 = `api-secret-two-${randomBytes(16).toString('hex')}`
const PASSPHRASE = `passphrase-${randomBytes(8).toString('hex')}`
const REDIS_PASSWORD = 'hunter2hunter2'
// REDIS_PASSWORD and REDIS_SENTINEL_PASSWORD (the URL's password above is REDIS_URL's).
const DATA_PASSWORD = `data-password-${randomBytes(8).toString('hex')}`
const SENTINEL_PASSWORD = `sentinel-password-${randomBytes(8).toString('hex')}`
const WEBHOOK_SECRET_1 = `whsec_${randomBytes(32).toString('base64')}`

/** The required variables only: everything else takes its default. */
function minimal (): Env {
  return {
    CYBS_ENVIRONMENT: 'simulator',
    CYBS_CLIENT_ID: 'partner-app',
    CYBS_CLIENT_SECRET: CLIENT_SECRET,
    TOKEN_ENCRYPTION_KEYS: `k2:${KEY_A},k1:${KEY_B}`,
    INTERNAL_API_KEYS: `portal:${API_SECRET_1},billing:${API_SECRET_2}`
  }
}

/** A valid simulator env in which every kind of secret is present (failure cases start here). */
function base (overrides: Env = {}): Env {
  return {
    ...minimal(),
    REDIS_URL: `redis://:${REDIS_PASSWORD}@redis.internal:6379`,
    CYBS_CLIENT_KEY_PASSPHRASE: PASSPHRASE,
    ...overrides
  }
}

/** Every secret value an env carries, taken from the variables the docs call secret (docs/configuration.md). */
function secretsOf (env: Env): string[] {
  const secrets = [CLIENT_SECRET, KEY_A, KEY_B, API_SECRET_1, API_SECRET_2, PASSPHRASE, REDIS_PASSWORD, DATA_PASSWORD, SENTINEL_PASSWORD]
  const after = (item: string): string => item.includes(':') ? item.slice(item.indexOf(':') + 1) : item
  for (const name of ['CYBS_CLIENT_SECRET', 'CYBS_CLIENT_KEY_PASSPHRASE', 'REDIS_PASSWORD', 'REDIS_SENTINEL_PASSWORD']) {
    if (env[name] !== undefined) secrets.push(env[name])
  }
  for (const name of ['TOKEN_ENCRYPTION_KEYS', 'INTERNAL_API_KEYS']) {
    for (const item of (env[name] ?? '').split(',')) secrets.push(after(item).trim())
  }
  const password = /^[a-z]+:\/\/[^@/]*:([^@/]+)@/.exec(env.REDIS_URL ?? '')?.[1]
  if (password !== undefined) secrets.push(password)
  // Fragments shorter than 8 characters would match ordinary words; no test secret is that short.
  return [...new Set(secrets.filter(s => s.length >= 8))]
}

/**
 * loadConfig(env) must throw a ConfigError; its lines must not contain a secret.
 * Returns the problem lines.
 */
function fails (t: Test, env: Env): string[] {
  let err: unknown
  try {
    loadConfig(env)
  } catch (e) {
    err = e
  }
  if (!(err instanceof ConfigError)) {
    t.fail('expected a ConfigError', { got: err })
    return []
  }
  t.ok(err.problems.length > 0, 'at least one problem')
  t.equal(err.message, `invalid configuration:\n${err.problems.join('\n')}`, 'the message lists the problems')
  const secrets = secretsOf(env)
  const leaked = secrets.filter(s => err.message.includes(s) || err.problems.some(p => p.includes(s)))
  t.same(leaked, [], 'no secret value in message or problems')
  return err.problems
}

/** One failure about exactly one variable: one line, starting with its name. */
function failsOn (t: Test, env: Env, name: string): string {
  const problems = fails(t, env)
  t.equal(problems.length, 1, `one problem: ${problems.join(' | ')}`)
  t.match(problems[0], new RegExp(`^${name}: `), `the line names ${name}`)
  return problems[0] ?? ''
}

function names (problems: string[]): string[] {
  return problems.map(p => p.slice(0, p.indexOf(':'))).sort()
}

// PEM material is generated per run with the openssl CLI and removed afterwards.
const dir = mkdtempSync(join(tmpdir(), 'cybs-config-test-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))
const CERT = join(dir, 'client-cert.pem')
const KEY = join(dir, 'client-key.pem')
const ENCRYPTED_KEY = join(dir, 'client-key-encrypted.pem')
const JUNK = join(dir, 'junk.pem')
const MISSING = join(dir, 'does-not-exist.pem')
execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
  '-keyout', KEY, '-out', CERT, '-days', '1', '-subj', '/CN=cybs-oauth-broker config test'], { stdio: 'pipe' })
execFileSync('openssl', ['pkey', '-in', KEY, '-aes256', '-passout', 'env:TEST_PASSPHRASE', '-out', ENCRYPTED_KEY],
  { stdio: 'pipe', env: { ...process.env, TEST_PASSPHRASE: PASSPHRASE } })
writeFileSync(JUNK, 'this is not PEM\n')
const CERT_PEM = readFileSync(CERT, 'utf8')
const KEY_PEM = readFileSync(KEY, 'utf8')

function withTls (environment: string, overrides: Env = {}): Env {
  return base({ CYBS_ENVIRONMENT: environment, CYBS_CLIENT_CERT_FILE: CERT, CYBS_CLIENT_KEY_FILE: KEY, ...overrides })
}

t.test('a minimal simulator env takes the defaults', async t => {
  const c: Config = loadConfig(minimal())
  t.equal(c.host, '127.0.0.1')
  t.equal(c.port, 3000)
  t.equal(c.logLevel, 'info')
  t.equal(c.publicBaseUrl, 'http://127.0.0.1:3000')
  t.same(c.redis, { mode: 'standalone', url: 'redis://127.0.0.1:6379' })
  t.equal(c.redisKeyPrefix, 'cybs:')
  t.equal(c.onboarding.stateTtlSeconds, 600)
  t.equal(c.onboarding.successUrl, undefined)
  t.equal(c.onboarding.failureUrl, undefined)
  t.equal(c.cybs.environment, 'simulator')
  t.equal(c.cybs.authorizeUrl, 'http://127.0.0.1:4010/ebc2/oauth/authorize')
  t.equal(c.cybs.tokenUrl, 'http://127.0.0.1:4010/oauth2/v3/token')
  t.equal(c.cybs.redirectUrl, 'http://127.0.0.1:3000/oauth/callback')
  t.equal(c.cybs.timeoutMs, 10000)
  t.equal(c.cybs.clientId, 'partner-app')
  t.equal(c.cybs.clientSecret, CLIENT_SECRET)
  t.equal(c.cybs.tls.cert, undefined, 'mutual TLS is optional with the simulator')
  t.equal(c.cybs.tls.key, undefined)
})

t.test('TRUST_PROXY forms: false, true (one hop), a hop count, trusted addresses and CIDRs', async t => {
  const trust = (v: string): unknown => loadConfig({ ...minimal(), TRUST_PROXY: v }).trustProxy
  t.equal(loadConfig(minimal()).trustProxy, false, 'default')
  t.equal(trust('false'), false)
  t.equal(trust('true'), 1, 'true trusts the nearest proxy only')
  t.equal(trust('2'), 2)
  t.same(trust('10.0.0.1, 10.1.0.0/16,fd00::/8'), ['10.0.0.1', '10.1.0.0/16', 'fd00::/8'])
})

t.test('the onboarding, link, page, edge, keep-alive and webhook settings', async t => {
  const c = loadConfig(minimal())
  t.equal(c.browserBinding, 'required')
  t.same(c.links, { ttlSeconds: 604800 })
  t.same(c.pages, { partnerName: undefined, portalUrl: undefined })
  t.same(c.stateLimits, { perClient: 300, total: 100000 })
  t.equal(c.internalListener, undefined)
  t.equal(c.webhook, undefined)
  t.equal(c.keepAlive.renewBeforeSeconds, 2592000)
  const secret1 = randomBytes(32)
  const secret2 = randomBytes(24)
  const d = loadConfig({
    ...minimal(),
    INTERNAL_PORT: '9090',
    PARTNER_NAME: 'Acme Payments',
    PARTNER_PORTAL_URL: 'https://portal.example/home',
    WEBHOOK_URL: 'https://receiver.example/hooks',
    WEBHOOK_SECRET: `whsec_${secret1.toString('base64')},whsec_${secret2.toString('base64')}`
  })
  t.same(d.internalListener, { host: '127.0.0.1', port: 9090 }, 'INTERNAL_HOST defaults to HOST')
  t.same(d.pages, { partnerName: 'Acme Payments', portalUrl: 'https://portal.example/home' })
  t.same(d.webhook?.secrets.map(k => k.toString('hex')), [secret1.toString('hex'), secret2.toString('hex')], 'every secret, decoded')
})

t.test('numbers and levels given as strings are parsed', async t => {
  const c = loadConfig({ ...minimal(), HOST: '0.0.0.0', PORT: '8080', LOG_LEVEL: 'warn', STATE_TTL_SECONDS: '3600', CYBS_TIMEOUT_MS: '2500', REDIS_KEY_PREFIX: 'tenant-a:' })
  t.equal(c.host, '0.0.0.0')
  t.equal(c.port, 8080)
  t.equal(c.logLevel, 'warn')
  t.equal(c.onboarding.stateTtlSeconds, 3600)
  t.equal(c.cybs.timeoutMs, 2500)
  t.equal(c.redisKeyPrefix, 'tenant-a:')
  t.equal(loadConfig({ ...minimal(), STATE_TTL_SECONDS: '1' }).onboarding.stateTtlSeconds, 1)
})

t.test('the redirect URL is derived from PUBLIC_BASE_URL', async t => {
  const cases: Array<[string, string, string]> = [
    ['https://broker.example.com', 'https://broker.example.com', 'https://broker.example.com/oauth/callback'],
    ['https://broker.example.com/', 'https://broker.example.com', 'https://broker.example.com/oauth/callback'],
    ['https://partner.example.com/cybs', 'https://partner.example.com/cybs', 'https://partner.example.com/cybs/oauth/callback'],
    ['https://partner.example.com/cybs/', 'https://partner.example.com/cybs', 'https://partner.example.com/cybs/oauth/callback'],
    ['http://localhost:8080/a/b//', 'http://localhost:8080/a/b', 'http://localhost:8080/a/b/oauth/callback']
  ]
  for (const [given, publicBaseUrl, redirectUrl] of cases) {
    const c = loadConfig({ ...minimal(), PUBLIC_BASE_URL: given })
    t.equal(c.publicBaseUrl, publicBaseUrl, `base of ${given}`)
    t.equal(c.cybs.redirectUrl, redirectUrl, `redirect of ${given}`)
  }
  const c = loadConfig({ ...minimal(), PUBLIC_BASE_URL: 'https://broker.example.com/', CYBS_REDIRECT_URL: 'https://partner.example.com/cb' })
  t.equal(c.cybs.redirectUrl, 'https://partner.example.com/cb', 'CYBS_REDIRECT_URL overrides the derived URL')
})

t.test('the CyberSource URLs follow CYBS_ENVIRONMENT', async t => {
  const test = loadConfig(withTls('test'))
  t.equal(test.cybs.environment, 'test')
  t.equal(test.cybs.authorizeUrl, 'https://businesscentertest.cybersource.com/ebc2/oauth/authorize')
  t.equal(test.cybs.tokenUrl, 'https://api-matest.cybersource.com/oauth2/v3/token')
  const production = loadConfig(withTls('production'))
  t.equal(production.cybs.environment, 'production')
  t.equal(production.cybs.authorizeUrl, 'https://businesscenter.cybersource.com/ebc2/oauth/authorize')
  t.equal(production.cybs.tokenUrl, 'https://api-ma.cybersource.com/oauth2/v3/token')
})

t.test('CYBS_AUTHORIZE_URL and CYBS_TOKEN_URL override the environment URLs', async t => {
  const production = loadConfig(withTls('production', {
    CYBS_AUTHORIZE_URL: 'https://auth.proxy.example.com/ebc2/oauth/authorize',
    CYBS_TOKEN_URL: 'https://egress.example.com/oauth2/v3/token'
  }))
  t.equal(production.cybs.authorizeUrl, 'https://auth.proxy.example.com/ebc2/oauth/authorize')
  t.equal(production.cybs.tokenUrl, 'https://egress.example.com/oauth2/v3/token')
  const simulator = loadConfig({
    ...minimal(),
    CYBS_AUTHORIZE_URL: 'http://127.0.0.1:5010/ebc2/oauth/authorize',
    CYBS_TOKEN_URL: 'http://127.0.0.1:5010/oauth2/v3/token'
  })
  t.equal(simulator.cybs.authorizeUrl, 'http://127.0.0.1:5010/ebc2/oauth/authorize')
  t.equal(simulator.cybs.tokenUrl, 'http://127.0.0.1:5010/oauth2/v3/token')
})

t.test('TOKEN_ENCRYPTION_KEYS becomes a key ring, first key first', async t => {
  const { encryptionKeys } = loadConfig(minimal())
  t.equal(encryptionKeys.length, 2)
  t.equal(encryptionKeys[0].kid, 'k2', 'the first key (the one that encrypts) comes first')
  t.equal(encryptionKeys[1].kid, 'k1')
  t.ok(Buffer.isBuffer(encryptionKeys[0].key))
  t.equal(encryptionKeys[0].key.length, 32)
  t.ok(encryptionKeys[0].key.equals(Buffer.from(KEY_A, 'base64')))
  t.ok(encryptionKeys[1].key.equals(Buffer.from(KEY_B, 'base64')))
  const one = loadConfig({ ...minimal(), TOKEN_ENCRYPTION_KEYS: `2024-01_main:${KEY_B}` }).encryptionKeys
  t.same(one.map(k => k.kid), ['2024-01_main'])
})

t.test('INTERNAL_API_KEYS becomes caller/secret pairs', async t => {
  const { internalApiKeys } = loadConfig(minimal())
  t.same(internalApiKeys, [
    { caller: 'portal', secret: API_SECRET_1 },
    { caller: 'billing', secret: API_SECRET_2 }
  ])
  const exact = 'x'.repeat(32)
  t.same(loadConfig({ ...minimal(), INTERNAL_API_KEYS: `svc:${exact}` }).internalApiKeys, [{ caller: 'svc', secret: exact }],
    'a 32-character secret is long enough')
})

t.test('Redis topologies', async t => {
  t.same(loadConfig({ ...minimal(), REDIS_URL: 'redis://:pw@redis.example.com:6380/2' }).redis,
    { mode: 'standalone', url: 'redis://:pw@redis.example.com:6380/2' })
  t.same(loadConfig({ ...minimal(), REDIS_URL: 'rediss://:pw@redis.example.com:6380/2' }).redis,
    { mode: 'standalone', url: 'rediss://:pw@redis.example.com:6380/2', tls: {} }, 'rediss:// means TLS')
  t.same(loadConfig({ ...minimal(), REDIS_SENTINELS: 'sentinel-1:26379, sentinel-2:26380,10.0.0.3:26379', REDIS_SENTINEL_NAME: 'mymaster' }).redis, {
    mode: 'sentinel',
    name: 'mymaster',
    sentinels: [{ host: 'sentinel-1', port: 26379 }, { host: 'sentinel-2', port: 26380 }, { host: '10.0.0.3', port: 26379 }]
  })
  t.same(loadConfig({ ...minimal(), REDIS_CLUSTER_NODES: 'node-1:7000,node-2:7001,[::1]:7002' }).redis, {
    mode: 'cluster',
    nodes: [{ host: 'node-1', port: 7000 }, { host: 'node-2', port: 7001 }, { host: '::1', port: 7002 }]
  })
})

t.test('Redis credentials and TLS', async t => {
  const sentinels = { REDIS_SENTINELS: 'sentinel-1:26379', REDIS_SENTINEL_NAME: 'mymaster' }
  const sentinelAddrs = [{ host: 'sentinel-1', port: 26379 }]
  const cluster = { REDIS_CLUSTER_NODES: 'node-1:7000' }
  const clusterNodes = [{ host: 'node-1', port: 7000 }]

  t.test('Sentinel: the data nodes\' and the Sentinels\' own credentials, TLS with a CA', async t => {
    t.same(loadConfig({
      ...minimal(),
      ...sentinels,
      REDIS_USERNAME: 'broker',
      REDIS_PASSWORD: DATA_PASSWORD,
      REDIS_SENTINEL_USERNAME: 'watcher',
      REDIS_SENTINEL_PASSWORD: SENTINEL_PASSWORD,
      REDIS_TLS: 'true',
      REDIS_CA_FILE: CERT
    }).redis, {
      mode: 'sentinel',
      sentinels: sentinelAddrs,
      name: 'mymaster',
      username: 'broker',
      password: DATA_PASSWORD,
      sentinelUsername: 'watcher',
      sentinelPassword: SENTINEL_PASSWORD,
      tls: { ca: CERT_PEM }
    })
    t.same(loadConfig({ ...minimal(), ...sentinels, REDIS_PASSWORD: DATA_PASSWORD }).redis,
      { mode: 'sentinel', sentinels: sentinelAddrs, name: 'mymaster', password: DATA_PASSWORD }, 'the Sentinels\' password is optional')
    t.same(loadConfig({ ...minimal(), ...sentinels, REDIS_SENTINEL_PASSWORD: SENTINEL_PASSWORD, REDIS_TLS: 'true' }).redis,
      { mode: 'sentinel', sentinels: sentinelAddrs, name: 'mymaster', sentinelPassword: SENTINEL_PASSWORD, tls: {} }, 'TLS with the system roots only')
  })

  t.test('Cluster: every node\'s credentials, TLS', async t => {
    t.same(loadConfig({ ...minimal(), ...cluster, REDIS_USERNAME: 'broker', REDIS_PASSWORD: DATA_PASSWORD, REDIS_TLS: 'true', REDIS_CA_FILE: CERT }).redis,
      { mode: 'cluster', nodes: clusterNodes, username: 'broker', password: DATA_PASSWORD, tls: { ca: CERT_PEM } })
    t.same(loadConfig({ ...minimal(), ...cluster, REDIS_PASSWORD: DATA_PASSWORD, REDIS_TLS: 'false' }).redis,
      { mode: 'cluster', nodes: clusterNodes, password: DATA_PASSWORD }, 'REDIS_TLS=false: no TLS')
    t.same(loadConfig({ ...minimal(), ...cluster, REDIS_TLS: 'true' }).redis, { mode: 'cluster', nodes: clusterNodes, tls: {} })
  })

  t.test('standalone: the scheme decides TLS; REDIS_PASSWORD for a URL without credentials', async t => {
    t.same(loadConfig({ ...minimal(), REDIS_URL: 'redis://redis.internal:6379', REDIS_USERNAME: 'broker', REDIS_PASSWORD: DATA_PASSWORD }).redis,
      { mode: 'standalone', url: 'redis://redis.internal:6379', username: 'broker', password: DATA_PASSWORD })
    t.same(loadConfig({ ...minimal(), REDIS_URL: 'rediss://redis.internal:6380', REDIS_PASSWORD: DATA_PASSWORD, REDIS_CA_FILE: CERT }).redis,
      { mode: 'standalone', url: 'rediss://redis.internal:6380', password: DATA_PASSWORD, tls: { ca: CERT_PEM } })
    t.same(loadConfig({ ...minimal(), REDIS_URL: 'rediss://redis.internal:6380', REDIS_TLS: 'true' }).redis,
      { mode: 'standalone', url: 'rediss://redis.internal:6380', tls: {} }, 'REDIS_TLS=true agrees with rediss://')
    t.same(loadConfig({ ...minimal(), REDIS_URL: 'rediss://redis.internal:6380', REDIS_TLS: 'false' }).redis,
      { mode: 'standalone', url: 'rediss://redis.internal:6380', tls: {} }, 'REDIS_TLS=false does not turn rediss:// off')
    t.equal(loadConfig(minimal()).redis.password, undefined, 'no password by default')
  })

  t.test('bad combinations: one line naming the variable, no password', async t => {
    const cases: Array<[string, Env, string]> = [
      ['REDIS_PASSWORD beside a password in REDIS_URL', { REDIS_PASSWORD: DATA_PASSWORD }, 'REDIS_PASSWORD'],
      ['REDIS_PASSWORD beside a user in REDIS_URL', { REDIS_URL: 'redis://someone@redis.internal:6379', REDIS_PASSWORD: DATA_PASSWORD }, 'REDIS_PASSWORD'],
      ['REDIS_USERNAME without REDIS_PASSWORD', { ...cluster, REDIS_USERNAME: 'broker' }, 'REDIS_USERNAME'],
      ['REDIS_SENTINEL_USERNAME without REDIS_SENTINEL_PASSWORD', { ...sentinels, REDIS_SENTINEL_USERNAME: 'watcher' }, 'REDIS_SENTINEL_USERNAME'],
      ['REDIS_SENTINEL_PASSWORD without REDIS_SENTINELS', { REDIS_SENTINEL_PASSWORD: SENTINEL_PASSWORD }, 'REDIS_SENTINEL_PASSWORD'],
      ['REDIS_SENTINEL_PASSWORD with a cluster', { ...cluster, REDIS_SENTINEL_PASSWORD: SENTINEL_PASSWORD }, 'REDIS_SENTINEL_PASSWORD'],
      ['REDIS_SENTINEL_USERNAME without REDIS_SENTINELS', { REDIS_SENTINEL_USERNAME: 'watcher' }, 'REDIS_SENTINEL_USERNAME'],
      ['REDIS_TLS=true with a redis:// URL', { REDIS_TLS: 'true' }, 'REDIS_TLS'],
      ['REDIS_TLS not a boolean', { ...cluster, REDIS_TLS: 'yes' }, 'REDIS_TLS'],
      ['REDIS_CA_FILE with a redis:// URL', { REDIS_CA_FILE: CERT }, 'REDIS_CA_FILE'],
      ['REDIS_CA_FILE with a cluster without REDIS_TLS', { ...cluster, REDIS_CA_FILE: CERT }, 'REDIS_CA_FILE'],
      ['REDIS_CA_FILE with Sentinel and REDIS_TLS=false', { ...sentinels, REDIS_TLS: 'false', REDIS_CA_FILE: CERT }, 'REDIS_CA_FILE'],
      ['REDIS_CA_FILE does not exist', { ...cluster, REDIS_TLS: 'true', REDIS_CA_FILE: MISSING }, 'REDIS_CA_FILE'],
      ['REDIS_CA_FILE is a directory', { ...cluster, REDIS_TLS: 'true', REDIS_CA_FILE: dir }, 'REDIS_CA_FILE'],
      ['REDIS_CA_FILE is not PEM', { ...cluster, REDIS_TLS: 'true', REDIS_CA_FILE: JUNK }, 'REDIS_CA_FILE'],
      ['REDIS_CA_FILE is a private key', { ...cluster, REDIS_TLS: 'true', REDIS_CA_FILE: KEY }, 'REDIS_CA_FILE'],
      ['REDIS_PASSWORD empty', { ...cluster, REDIS_PASSWORD: '' }, 'REDIS_PASSWORD'],
      ['REDIS_SENTINEL_PASSWORD empty', { ...sentinels, REDIS_SENTINEL_PASSWORD: '' }, 'REDIS_SENTINEL_PASSWORD']
    ]
    for (const [title, overrides, name] of cases) {
      t.test(title, async t => {
        const line = failsOn(t, base(overrides), name)
        for (const secret of [DATA_PASSWORD, SENTINEL_PASSWORD, REDIS_PASSWORD]) t.notOk(line.includes(secret), 'no password in the line')
      })
    }
    t.test('credentials in REDIS_URL and both REDIS_USERNAME and REDIS_PASSWORD: a line for each', async t => {
      const problems = fails(t, base({ REDIS_URL: `redis://someone:${REDIS_PASSWORD}@redis.internal:6379`, REDIS_USERNAME: 'broker', REDIS_PASSWORD: DATA_PASSWORD }))
      t.same(names(problems), ['REDIS_PASSWORD', 'REDIS_USERNAME'])
    })
    t.test('reported beside schema problems too', async t => {
      const problems = fails(t, base({ PORT: 'http', REDIS_TLS: 'true', REDIS_CA_FILE: JUNK, REDIS_SENTINEL_PASSWORD: SENTINEL_PASSWORD }))
      t.same(names(problems), ['PORT', 'REDIS_CA_FILE', 'REDIS_SENTINEL_PASSWORD', 'REDIS_TLS'])
    })
  })
})

t.test('each required variable missing', async t => {
  for (const name of ['CYBS_ENVIRONMENT', 'CYBS_CLIENT_ID', 'CYBS_CLIENT_SECRET', 'TOKEN_ENCRYPTION_KEYS', 'INTERNAL_API_KEYS']) {
    t.test(name, async t => {
      failsOn(t, base({ [name]: undefined }), name)
    })
    t.test(`${name} empty`, async t => {
      failsOn(t, base({ [name]: '' }), name)
    })
  }
})

t.test('several problems at once give one line each', async t => {
  const required = ['CYBS_CLIENT_ID', 'CYBS_CLIENT_SECRET', 'CYBS_ENVIRONMENT', 'INTERNAL_API_KEYS', 'TOKEN_ENCRYPTION_KEYS']
  t.same(names(fails(t, {})), required, 'an empty env names every required variable')

  const schemaAndStructure = fails(t, base({
    CYBS_CLIENT_ID: undefined,
    PORT: 'http',
    REDIS_URL: `http://:${REDIS_PASSWORD}@redis.internal:6379`,
    TOKEN_ENCRYPTION_KEYS: `k1:${KEY_A},k1:${KEY_B}`,
    INTERNAL_API_KEYS: 'portal:too-short-secret-1',
    PUBLIC_BASE_URL: 'broker.example.com'
  }))
  t.same(names(schemaAndStructure),
    ['CYBS_CLIENT_ID', 'INTERNAL_API_KEYS', 'PORT', 'PUBLIC_BASE_URL', 'REDIS_URL', 'TOKEN_ENCRYPTION_KEYS'],
    'schema problems and structural problems are reported together')

  const structureOnly = fails(t, base({ REDIS_SENTINELS: 'sentinel-1:26379', STATE_TTL_SECONDS: '0', CYBS_ENVIRONMENT: 'production' }))
  t.same(names(structureOnly), ['CYBS_CLIENT_CERT_FILE', 'CYBS_CLIENT_KEY_FILE', 'REDIS_SENTINEL_NAME', 'STATE_TTL_SECONDS'])
})

t.test('malformed variables', async t => {
  const cases: Array<[string, Env, string]> = [
    ['TOKEN_ENCRYPTION_KEYS without a colon', { TOKEN_ENCRYPTION_KEYS: KEY_A }, 'TOKEN_ENCRYPTION_KEYS'],
    ['TOKEN_ENCRYPTION_KEYS second entry without a colon', { TOKEN_ENCRYPTION_KEYS: `k1:${KEY_A},${KEY_B}` }, 'TOKEN_ENCRYPTION_KEYS'],
    ['TOKEN_ENCRYPTION_KEYS with a bad kid', { TOKEN_ENCRYPTION_KEYS: `bad kid!:${KEY_A}` }, 'TOKEN_ENCRYPTION_KEYS'],
    ['TOKEN_ENCRYPTION_KEYS with an empty kid', { TOKEN_ENCRYPTION_KEYS: `:${KEY_A}` }, 'TOKEN_ENCRYPTION_KEYS'],
    // A dot separates the parts of an encrypted value: a kid with one could never be read back.
    ['TOKEN_ENCRYPTION_KEYS with a dot in a kid', { TOKEN_ENCRYPTION_KEYS: `k.1:${KEY_A}` }, 'TOKEN_ENCRYPTION_KEYS'],
    ['TOKEN_ENCRYPTION_KEYS with a 16-byte key', { TOKEN_ENCRYPTION_KEYS: `k1:${randomBytes(16).toString('base64')}` }, 'TOKEN_ENCRYPTION_KEYS'],
    ['TOKEN_ENCRYPTION_KEYS with a 33-byte key', { TOKEN_ENCRYPTION_KEYS: `k1:${randomBytes(33).toString('base64')}` }, 'TOKEN_ENCRYPTION_KEYS'],
    ['TOKEN_ENCRYPTION_KEYS not base64', { TOKEN_ENCRYPTION_KEYS: `k1:${'*'.repeat(20)}not-base64!${'#'.repeat(12)}` }, 'TOKEN_ENCRYPTION_KEYS'],
    ['TOKEN_ENCRYPTION_KEYS with a duplicate kid', { TOKEN_ENCRYPTION_KEYS: `k1:${KEY_A},k1:${KEY_B}` }, 'TOKEN_ENCRYPTION_KEYS'],
    ['INTERNAL_API_KEYS with a short secret', { INTERNAL_API_KEYS: `portal:${API_SECRET_1},billing:${'s'.repeat(31)}` }, 'INTERNAL_API_KEYS'],
    ['INTERNAL_API_KEYS without a colon', { INTERNAL_API_KEYS: API_SECRET_1 }, 'INTERNAL_API_KEYS'],
    ['INTERNAL_API_KEYS with an empty caller', { INTERNAL_API_KEYS: `:${API_SECRET_1}` }, 'INTERNAL_API_KEYS'],
    ['INTERNAL_API_KEYS with a duplicate secret', { INTERNAL_API_KEYS: `portal:${API_SECRET_1},billing:${API_SECRET_1}` }, 'INTERNAL_API_KEYS'],
    ['REDIS_SENTINELS without REDIS_SENTINEL_NAME', { REDIS_SENTINELS: 'sentinel-1:26379' }, 'REDIS_SENTINEL_NAME'],
    ['REDIS_SENTINELS entry without a port', { REDIS_SENTINELS: 'sentinel-1:26379,sentinel-2', REDIS_SENTINEL_NAME: 'mymaster' }, 'REDIS_SENTINELS'],
    ['REDIS_SENTINELS port out of range', { REDIS_SENTINELS: 'sentinel-1:65536', REDIS_SENTINEL_NAME: 'mymaster' }, 'REDIS_SENTINELS'],
    ['REDIS_CLUSTER_NODES port not a number', { REDIS_CLUSTER_NODES: 'node-1:7000,node-2:http' }, 'REDIS_CLUSTER_NODES'],
    ['REDIS_CLUSTER_NODES port 0', { REDIS_CLUSTER_NODES: 'node-1:0' }, 'REDIS_CLUSTER_NODES'],
    ['REDIS_URL not redis://', { REDIS_URL: `http://:${REDIS_PASSWORD}@redis.internal:6379` }, 'REDIS_URL'],
    ['REDIS_URL not a URL', { REDIS_URL: `${REDIS_PASSWORD}@redis.internal:6379` }, 'REDIS_URL'],
    ['PUBLIC_BASE_URL not a URL', { PUBLIC_BASE_URL: 'broker.example.com' }, 'PUBLIC_BASE_URL'],
    ['PUBLIC_BASE_URL not http(s)', { PUBLIC_BASE_URL: 'ftp://broker.example.com' }, 'PUBLIC_BASE_URL'],
    ['STATE_TTL_SECONDS 0', { STATE_TTL_SECONDS: '0' }, 'STATE_TTL_SECONDS'],
    ['STATE_TTL_SECONDS 3601', { STATE_TTL_SECONDS: '3601' }, 'STATE_TTL_SECONDS'],
    ['STATE_TTL_SECONDS not an integer', { STATE_TTL_SECONDS: '60.5' }, 'STATE_TTL_SECONDS'],
    ['PORT not a number', { PORT: 'http' }, 'PORT'],
    ['PORT out of range', { PORT: '70000' }, 'PORT'],
    ['CYBS_TIMEOUT_MS not a number', { CYBS_TIMEOUT_MS: 'ten seconds' }, 'CYBS_TIMEOUT_MS'],
    ['CYBS_ENVIRONMENT bogus', { CYBS_ENVIRONMENT: 'staging' }, 'CYBS_ENVIRONMENT'],
    ['LOG_LEVEL bogus', { LOG_LEVEL: 'verbose' }, 'LOG_LEVEL'],
    ['REDIS_KEY_PREFIX with a space', { REDIS_KEY_PREFIX: 'my prefix' }, 'REDIS_KEY_PREFIX'],
    ['CYBS_REDIRECT_URL not a URL', { CYBS_REDIRECT_URL: '/oauth/callback' }, 'CYBS_REDIRECT_URL'],
    ['ONBOARDING_SUCCESS_URL not a URL', { ONBOARDING_SUCCESS_URL: 'done.html' }, 'ONBOARDING_SUCCESS_URL'],
    ['TRUST_PROXY not an address', { TRUST_PROXY: '10.0.0.0/8,proxy.internal' }, 'TRUST_PROXY'],
    ['TRUST_PROXY CIDR too wide', { TRUST_PROXY: '10.0.0.0/33' }, 'TRUST_PROXY'],
    ['TRUST_PROXY IPv6 CIDR too wide', { TRUST_PROXY: 'fd00::/129' }, 'TRUST_PROXY'],
    ['TRUST_PROXY negative', { TRUST_PROXY: '-1' }, 'TRUST_PROXY'],
    ['INTERNAL_PORT equal to PORT', { PORT: '8080', INTERNAL_PORT: '8080' }, 'INTERNAL_PORT'],
    ['ONBOARDING_BROWSER_BINDING bogus', { ONBOARDING_BROWSER_BINDING: 'optional' }, 'ONBOARDING_BROWSER_BINDING'],
    ['ONBOARDING_LINK_TTL_SECONDS over 30 days', { ONBOARDING_LINK_TTL_SECONDS: '2592001' }, 'ONBOARDING_LINK_TTL_SECONDS'],
    ['PARTNER_PORTAL_URL not a URL', { PARTNER_PORTAL_URL: 'portal' }, 'PARTNER_PORTAL_URL'],
    ['WEBHOOK_URL without WEBHOOK_SECRET', { WEBHOOK_URL: 'https://receiver.example/hooks' }, 'WEBHOOK_SECRET'],
    ['WEBHOOK_SECRET without WEBHOOK_URL', { WEBHOOK_SECRET: `whsec_${randomBytes(32).toString('base64')}` }, 'WEBHOOK_URL'],
    ['WEBHOOK_SECRET without whsec_', { WEBHOOK_URL: 'https://receiver.example/hooks', WEBHOOK_SECRET: randomBytes(32).toString('base64') }, 'WEBHOOK_SECRET'],
    ['WEBHOOK_SECRET too short', { WEBHOOK_URL: 'https://receiver.example/hooks', WEBHOOK_SECRET: `whsec_${randomBytes(16).toString('base64')}` }, 'WEBHOOK_SECRET'],
    ['WEBHOOK_URL not http(s)', { WEBHOOK_URL: 'ftp://receiver.example/hooks', WEBHOOK_SECRET: `whsec_${randomBytes(32).toString('base64')}` }, 'WEBHOOK_URL']
  ]
  for (const [title, overrides, name] of cases) {
    t.test(title, async t => {
      failsOn(t, base(overrides), name)
    })
  }

  t.test('the enumerations are listed', async t => {
    t.match(failsOn(t, base({ CYBS_ENVIRONMENT: 'staging' }), 'CYBS_ENVIRONMENT'), /test, production, simulator/)
    t.match(failsOn(t, base({ LOG_LEVEL: 'verbose' }), 'LOG_LEVEL'), /info/)
  })

  for (const environment of ['test', 'production']) {
    t.test(`${environment}: the token URL must use https`, async t => {
      failsOn(t, withTls(environment, { CYBS_TOKEN_URL: 'http://api-ma.cybersource.com/oauth2/v3/token' }), 'CYBS_TOKEN_URL')
    })
    t.test(`${environment}: the authorize URL must use https`, async t => {
      failsOn(t, withTls(environment, { CYBS_AUTHORIZE_URL: 'http://businesscenter.cybersource.com/ebc2/oauth/authorize' }), 'CYBS_AUTHORIZE_URL')
    })
  }
  t.test('an override URL must not carry credentials', async t => {
    failsOn(t, withTls('production', { CYBS_TOKEN_URL: `https://user:${CLIENT_SECRET}@api-ma.cybersource.com/oauth2/v3/token` }), 'CYBS_TOKEN_URL')
  })
})

t.test('mutual TLS', async t => {
  for (const environment of ['test', 'production']) {
    t.test(environment, async t => {
      t.test('both files missing', async t => {
        const problems = fails(t, base({ CYBS_ENVIRONMENT: environment }))
        t.same(names(problems), ['CYBS_CLIENT_CERT_FILE', 'CYBS_CLIENT_KEY_FILE'])
      })
      t.test('certificate file missing', async t => {
        failsOn(t, withTls(environment, { CYBS_CLIENT_CERT_FILE: undefined }), 'CYBS_CLIENT_CERT_FILE')
      })
      t.test('key file missing', async t => {
        failsOn(t, withTls(environment, { CYBS_CLIENT_KEY_FILE: undefined }), 'CYBS_CLIENT_KEY_FILE')
      })
      t.test('certificate path does not exist', async t => {
        failsOn(t, withTls(environment, { CYBS_CLIENT_CERT_FILE: MISSING }), 'CYBS_CLIENT_CERT_FILE')
      })
      t.test('key path does not exist', async t => {
        failsOn(t, withTls(environment, { CYBS_CLIENT_KEY_FILE: MISSING }), 'CYBS_CLIENT_KEY_FILE')
      })
      t.test('certificate path is a directory', async t => {
        failsOn(t, withTls(environment, { CYBS_CLIENT_CERT_FILE: dir }), 'CYBS_CLIENT_CERT_FILE')
      })
      t.test('certificate file is not a certificate', async t => {
        failsOn(t, withTls(environment, { CYBS_CLIENT_CERT_FILE: JUNK }), 'CYBS_CLIENT_CERT_FILE')
        failsOn(t, withTls(environment, { CYBS_CLIENT_CERT_FILE: KEY }), 'CYBS_CLIENT_CERT_FILE')
      })
      t.test('key file is not a key', async t => {
        failsOn(t, withTls(environment, { CYBS_CLIENT_KEY_FILE: JUNK }), 'CYBS_CLIENT_KEY_FILE')
        failsOn(t, withTls(environment, { CYBS_CLIENT_KEY_FILE: CERT }), 'CYBS_CLIENT_KEY_FILE')
      })
      t.test('encrypted key with a wrong passphrase', async t => {
        failsOn(t, withTls(environment, { CYBS_CLIENT_KEY_FILE: ENCRYPTED_KEY, CYBS_CLIENT_KEY_PASSPHRASE: `wrong-${PASSPHRASE}` }), 'CYBS_CLIENT_KEY_FILE')
      })
      t.test('encrypted key without a passphrase', async t => {
        failsOn(t, withTls(environment, { CYBS_CLIENT_KEY_FILE: ENCRYPTED_KEY, CYBS_CLIENT_KEY_PASSPHRASE: undefined }), 'CYBS_CLIENT_KEY_FILE')
      })
      t.test('CA file that is not a certificate bundle', async t => {
        failsOn(t, withTls(environment, { CYBS_CA_FILE: JUNK }), 'CYBS_CA_FILE')
      })
      t.test('valid files are loaded', async t => {
        const { tls } = loadConfig(withTls(environment, { CYBS_CLIENT_KEY_PASSPHRASE: undefined })).cybs
        t.equal(tls.cert, CERT_PEM)
        t.equal(tls.key, KEY_PEM)
        t.equal(tls.passphrase, undefined)
        t.equal(tls.ca, undefined)
      })
      t.test('an encrypted key with its passphrase is loaded', async t => {
        const { tls } = loadConfig(withTls(environment, { CYBS_CLIENT_KEY_FILE: ENCRYPTED_KEY, CYBS_CA_FILE: CERT })).cybs
        t.equal(tls.cert, CERT_PEM)
        t.equal(tls.key, readFileSync(ENCRYPTED_KEY, 'utf8'))
        t.equal(tls.passphrase, PASSPHRASE)
        t.equal(tls.ca, CERT_PEM, 'CYBS_CA_FILE is loaded too')
      })
    })
  }

  t.test('simulator: optional, but loaded and checked when given', async t => {
    const { tls } = loadConfig(withTls('simulator')).cybs
    t.equal(tls.cert, CERT_PEM)
    t.equal(tls.key, KEY_PEM)
    failsOn(t, withTls('simulator', { CYBS_CLIENT_KEY_FILE: undefined }), 'CYBS_CLIENT_KEY_FILE')
    failsOn(t, withTls('simulator', { CYBS_CLIENT_CERT_FILE: undefined }), 'CYBS_CLIENT_CERT_FILE')
    failsOn(t, withTls('simulator', { CYBS_CLIENT_KEY_FILE: ENCRYPTED_KEY, CYBS_CLIENT_KEY_PASSPHRASE: 'not-the-passphrase' }), 'CYBS_CLIENT_KEY_FILE')
  })
})

t.test('INTERNAL_API_KEYS problems name the entry by position, never a value of it', async t => {
  // A secret that is also a valid caller name ([A-Za-z0-9_.-], 40 characters): written first by
  // mistake, it sits where the caller belongs, so secretsOf() would not know it is one.
  const reversed = randomBytes(20).toString('hex')
  const short = `short-${randomBytes(6).toString('hex')}` // 18 characters
  const cases: Array<[string, string, number, string[]]> = [
    ['a reversed entry (secret:caller)', `${reversed}:payments`, 1, [reversed]],
    ['a reversed second entry', `portal:${API_SECRET_1},${reversed}:payments`, 2, [reversed]],
    ['a short secret', `portal:${API_SECRET_1},billing:${short}`, 2, [short]],
    ['a short secret in the first entry', `portal:${short},billing:${API_SECRET_2}`, 1, [short]],
    ['a reversed entry and a short secret', `${reversed}:payments,billing:${short}`, 0, [reversed, short]]
  ]
  for (const [title, value, entry, hidden] of cases) {
    t.test(title, async t => {
      const problems = fails(t, base({ INTERNAL_API_KEYS: value }))
      const lines = problems.filter(p => p.startsWith('INTERNAL_API_KEYS: '))
      t.equal(lines.length, entry === 0 ? 2 : 1, `one line per bad entry: ${problems.join(' | ')}`)
      t.equal(problems.length, lines.length, 'only INTERNAL_API_KEYS is named')
      if (entry === 0) {
        t.match(lines[0], /\bentry 1\b/)
        t.match(lines[1], /\bentry 2\b/)
      } else {
        t.match(lines[0], new RegExp(`\\bentry ${entry}\\b`), 'the line names the entry by its position')
      }
      for (const h of hidden) {
        t.notOk(problems.some(p => p.includes(h)), 'the secret is not in any problem line')
        t.notOk(problems.some(p => p.includes(h.slice(0, 12))), 'nor a prefix of it')
      }
      // Nor the caller field: for a reversed entry that is where the secret sits.
      t.notOk(problems.some(p => p.includes('payments') || p.includes('billing') || p.includes('portal')), 'no caller field is quoted')
    })
  }

  t.test('a duplicate secret is named by position too', async t => {
    const line = failsOn(t, base({ INTERNAL_API_KEYS: `portal:${API_SECRET_1},billing:${API_SECRET_2},audit:${API_SECRET_1}` }), 'INTERNAL_API_KEYS')
    t.match(line, /\bentry 3\b/)
    t.notMatch(line, /portal|billing|audit/)
  })
})

t.test('PUBLIC_BASE_URL with a query string or a fragment is rejected', async t => {
  for (const value of ['https://broker.example.com/?x=1', 'https://broker.example.com/cybs?tenant=a', 'https://broker.example.com/#top', 'https://broker.example.com/cybs/?a=1#b']) {
    t.test(value, async t => {
      failsOn(t, base({ PUBLIC_BASE_URL: value }), 'PUBLIC_BASE_URL')
    })
  }
  // A bare '?' or '#' leaves URL.search and URL.hash empty while URL.href keeps it; the redirect
  // URL would become e.g. https://broker.example.com/?/oauth/callback.
  for (const value of ['https://broker.example.com?', 'https://broker.example.com/cybs/#']) {
    t.test(`${value} (bare marker)`, async t => {
      failsOn(t, base({ PUBLIC_BASE_URL: value }), 'PUBLIC_BASE_URL')
    })
  }
  t.test('reported beside schema problems too', async t => {
    const problems = fails(t, base({ PORT: 'http', PUBLIC_BASE_URL: 'https://broker.example.com/?x=1' }))
    t.same(names(problems), ['PORT', 'PUBLIC_BASE_URL'])
  })
  t.test('a bare base URL with a path is still fine', async t => {
    t.equal(loadConfig({ ...minimal(), PUBLIC_BASE_URL: 'https://broker.example.com/cybs/' }).publicBaseUrl, 'https://broker.example.com/cybs')
  })
})

t.test('the secret check itself finds a leak', async t => {
  // Guards the guard: a problem line that quoted a value would be caught by secretsOf().
  const env = base({ INTERNAL_API_KEYS: `portal:${'s'.repeat(31)}` })
  const secrets = secretsOf(env)
  for (const s of [CLIENT_SECRET, KEY_A, API_SECRET_1, PASSPHRASE, REDIS_PASSWORD, 's'.repeat(31)]) {
    t.ok(secrets.includes(s), 'secret listed')
  }
  const hypothetical = `INTERNAL_API_KEYS: secret ${'s'.repeat(31)} is too short`
  t.ok(secrets.some(s => hypothetical.includes(s)))
})

t.test('NAME_FILE: every secret variable may be read from a file', async t => {
  let n = 0
  const file = (content: string): string => {
    const path = join(dir, `secret-${++n}`)
    writeFileSync(path, content)
    return path
  }
  /** What base() needs beside each secret for it to apply. */
  const FILE_CONTEXT: Partial<Record<typeof SECRET_VARIABLES[number], Env>> = {
    CYBS_CLIENT_KEY_PASSPHRASE: { CYBS_CLIENT_CERT_FILE: CERT, CYBS_CLIENT_KEY_FILE: ENCRYPTED_KEY },
    REDIS_PASSWORD: { REDIS_URL: 'redis://redis.internal:6379' },
    REDIS_SENTINEL_PASSWORD: { REDIS_SENTINELS: 'sentinel-1:26379', REDIS_SENTINEL_NAME: 'mymaster' },
    WEBHOOK_SECRET: { WEBHOOK_URL: 'https://receiver.example/hooks' }
  }
  /** A value for each secret that base() lacks. */
  const INLINE: Env = { REDIS_PASSWORD: DATA_PASSWORD, REDIS_SENTINEL_PASSWORD: SENTINEL_PASSWORD, WEBHOOK_SECRET: WEBHOOK_SECRET_1 }
  /** base() with NAME replaced by NAME_FILE pointing at a file holding `content`. */
  const viaFile = (name: string, content: string, overrides: Env = {}): Env => base({ [name]: undefined, [`${name}_FILE`]: file(content), ...overrides })

  t.test('the list names schema variables, and no NAME_FILE is a schema variable of its own', async t => {
    const properties = Object.keys(EnvSchema.properties)
    t.same(SECRET_VARIABLES.filter(name => !properties.includes(name)), [])
    t.same(SECRET_VARIABLES.filter(name => properties.includes(`${name}_FILE`)), [])
  })

  t.test('the value comes from the file, for each secret variable', async t => {
    const apiKeys = `portal:${API_SECRET_2}`
    const redisUrl = `redis://:${REDIS_PASSWORD}@redis.from-file:6379/1`
    const values: Record<typeof SECRET_VARIABLES[number], [string, (c: Config) => unknown, unknown]> = {
      CYBS_CLIENT_SECRET: [`file-${CLIENT_SECRET}`, c => c.cybs.clientSecret, `file-${CLIENT_SECRET}`],
      CYBS_CLIENT_KEY_PASSPHRASE: [PASSPHRASE, c => c.cybs.tls.passphrase, PASSPHRASE],
      TOKEN_ENCRYPTION_KEYS: [`k9:${KEY_B}`, c => c.encryptionKeys.map(k => k.kid), ['k9']],
      INTERNAL_API_KEYS: [apiKeys, c => c.internalApiKeys, [{ caller: 'portal', secret: API_SECRET_2 }]],
      REDIS_URL: [redisUrl, c => c.redis, { mode: 'standalone', url: redisUrl }],
      REDIS_PASSWORD: [DATA_PASSWORD, c => c.redis.password, DATA_PASSWORD],
      REDIS_SENTINEL_PASSWORD: [SENTINEL_PASSWORD, c => c.redis.mode === 'sentinel' ? c.redis.sentinelPassword : 'not sentinel', SENTINEL_PASSWORD],
      WEBHOOK_SECRET: [WEBHOOK_SECRET_1, c => c.webhook?.secrets.length, 1]
    }
    for (const name of SECRET_VARIABLES) {
      const [content, pick, expected] = values[name]
      t.same(pick(loadConfig(viaFile(name, `${content}\n`, FILE_CONTEXT[name]))), expected, `${name}_FILE`)
    }
  })

  t.test('one trailing newline is dropped, \\n or \\r\\n, and nothing else', async t => {
    const secretOf = (content: string): string => loadConfig(viaFile('CYBS_CLIENT_SECRET', content)).cybs.clientSecret
    t.equal(secretOf(CLIENT_SECRET), CLIENT_SECRET, 'no newline')
    t.equal(secretOf(`${CLIENT_SECRET}\n`), CLIENT_SECRET, '\\n')
    t.equal(secretOf(`${CLIENT_SECRET}\r\n`), CLIENT_SECRET, '\\r\\n')
    t.equal(secretOf(`${CLIENT_SECRET}\n\n`), `${CLIENT_SECRET}\n`, 'only one newline')
    t.equal(secretOf(` ${CLIENT_SECRET} \n`), ` ${CLIENT_SECRET} `, 'spaces are part of the value')
  })

  t.test('an empty NAME beside NAME_FILE counts as unset', async t => {
    t.equal(loadConfig(viaFile('CYBS_CLIENT_SECRET', `${CLIENT_SECRET}\n`, { CYBS_CLIENT_SECRET: '' })).cybs.clientSecret, CLIENT_SECRET)
  })

  for (const name of SECRET_VARIABLES) {
    t.test(`${name} and ${name}_FILE both set: one line naming ${name}, no secret`, async t => {
      const value = base()[name] ?? INLINE[name] ?? PASSPHRASE
      const env = base({ CYBS_CLIENT_KEY_PASSPHRASE: PASSPHRASE, ...FILE_CONTEXT[name], [name]: value, [`${name}_FILE`]: file(`${value}\n`) })
      t.match(failsOn(t, env, name), `${name}_FILE`)
    })
  }

  t.test('an unusable file: one line naming NAME_FILE, nothing about NAME itself', async t => {
    const cases: Array<[string, string]> = [
      ['a missing file', MISSING],
      ['a directory', dir],
      ['an empty file', file('')],
      ['a file with a newline only', file('\n')],
      ['an empty path', ''],
      ['a file too large for a secret', file('x'.repeat(64 * 1024 + 1))]
    ]
    for (const [title, path] of cases) {
      t.test(title, async t => {
        failsOn(t, base({ INTERNAL_API_KEYS: undefined, INTERNAL_API_KEYS_FILE: path }), 'INTERNAL_API_KEYS_FILE')
      })
    }
  })

  t.test('a secret written into NAME_FILE by mistake is not printed', async t => {
    const mistaken = `${randomBytes(20).toString('hex')}-not-a-path`
    const line = failsOn(t, base({ CYBS_CLIENT_SECRET: undefined, CYBS_CLIENT_SECRET_FILE: mistaken }), 'CYBS_CLIENT_SECRET_FILE')
    t.notOk(line.includes(mistaken.slice(0, 12)), `the path is not echoed: ${line}`)
  })

  t.test('a value from a file is checked like one given inline, and never printed', async t => {
    const short = `short-from-file-${randomBytes(4).toString('hex')}` // 24 characters
    const line = failsOn(t, viaFile('INTERNAL_API_KEYS', `portal:${short}\n`), 'INTERNAL_API_KEYS')
    t.match(line, /shorter than 32/)
    t.notOk(line.includes(short), 'the secret from the file is not in the line')
    const redis = failsOn(t, viaFile('REDIS_URL', `http://:${REDIS_PASSWORD}@redis.internal:6379\n`), 'REDIS_URL')
    t.notOk(redis.includes(REDIS_PASSWORD))
    const both = failsOn(t, viaFile('REDIS_PASSWORD', `${DATA_PASSWORD}\n`), 'REDIS_PASSWORD')
    t.match(both, /REDIS_URL carries credentials/, 'a password from a file beside one in REDIS_URL is rejected too')
    t.notOk(both.includes(DATA_PASSWORD) || both.includes(REDIS_PASSWORD))
    failsOn(t, viaFile('REDIS_SENTINEL_PASSWORD', `${SENTINEL_PASSWORD}\n`), 'REDIS_SENTINEL_PASSWORD')
  })

  t.test('file problems are reported beside schema and structural problems', async t => {
    const problems = fails(t, base({
      PORT: 'http',
      PUBLIC_BASE_URL: 'broker.example.com',
      TOKEN_ENCRYPTION_KEYS: undefined,
      TOKEN_ENCRYPTION_KEYS_FILE: MISSING,
      CYBS_CLIENT_SECRET_FILE: file(`${CLIENT_SECRET}\n`)
    }))
    t.same(names(problems), ['CYBS_CLIENT_SECRET', 'PORT', 'PUBLIC_BASE_URL', 'TOKEN_ENCRYPTION_KEYS_FILE'])
    t.same(names(fails(t, base({ REDIS_URL: undefined, REDIS_URL_FILE: MISSING, STATE_TTL_SECONDS: '0' }))), ['REDIS_URL_FILE', 'STATE_TTL_SECONDS'],
      'a failed REDIS_URL_FILE is not replaced by the default URL silently')
  })
})
