// The switches of `npm run simulator`: command-line flags (node:util parseArgs), each with an
// environment variable that it overrides. Pure: argv and env in, settings or problems out.
import { parseArgs } from 'node:util'
import { ID_PATTERN } from '../config.js'
import { DEFAULT_OAUTH_ERROR_STATUS, FAULTS, type Behavior, type Fault, type SimulatorOptions } from './app.js'

interface Switch {
  flag: string
  env?: string
  /** Placeholder of the value; a switch without one is boolean. */
  arg?: string
  help: string
}

/** Every switch, in the order --help shows them. docs/simulator.md lists the same. */
export const SWITCHES: readonly Switch[] = [
  { flag: 'host', env: 'SIMULATOR_HOST', arg: 'ADDRESS', help: 'address to listen on (default 127.0.0.1)' },
  { flag: 'port', env: 'SIMULATOR_PORT', arg: 'PORT', help: 'port to listen on, 0 for any free port (default 4010)' },
  { flag: 'client-id', env: 'CYBS_CLIENT_ID', arg: 'ID', help: 'the only client id accepted (default demo-client-id); its secret comes from CYBS_CLIENT_SECRET only (default demo-client-secret)' },
  { flag: 'redirect-url', env: 'CYBS_REDIRECT_URL', arg: 'URL', help: 'the registered redirect URL (default: any absolute http(s) URL is accepted)' },
  { flag: 'partner-name', env: 'SIMULATOR_PARTNER_NAME', arg: 'NAME', help: 'the application name on the consent page (default Demo Partner)' },
  { flag: 'merchant-id', env: 'SIMULATOR_MERCHANT_ID', arg: 'ID', help: 'the merchant id the consent page suggests (default demo_merchant)' },
  { flag: 'access-token-ttl', env: 'SIMULATOR_ACCESS_TOKEN_TTL', arg: 'SECONDS', help: 'access token lifetime (default 900)' },
  { flag: 'refresh-token-ttl', env: 'SIMULATOR_REFRESH_TOKEN_TTL', arg: 'SECONDS', help: 'refresh token lifetime, reset by each refresh (default 31536000, one year)' },
  { flag: 'code-ttl', env: 'SIMULATOR_CODE_TTL', arg: 'SECONDS', help: 'authorization code lifetime (default 600)' },
  { flag: 'rotate-refresh-tokens', env: 'SIMULATOR_ROTATE_REFRESH_TOKENS', help: 'issue a new refresh token on every refresh and invalidate the old one (--no-rotate-refresh-tokens: off, the default)' },
  { flag: 'oauth-error-status', env: 'SIMULATOR_OAUTH_ERROR_STATUS', arg: 'STATUS', help: `HTTP status of OAuth error answers, 400-599 (default ${DEFAULT_OAUTH_ERROR_STATUS}, as CyberSource documents; 400 for RFC 6749)` },
  { flag: 'fault', env: 'SIMULATOR_FAULT', arg: 'FAULT', help: `what token requests get: ${FAULTS.join(', ')} (default none)` },
  { flag: 'delay-ms', env: 'SIMULATOR_DELAY_MS', arg: 'MS', help: 'wait this long before answering a token request, 0-600000 (default 0)' },
  { flag: 'failure-rate', env: 'SIMULATOR_FAILURE_RATE', arg: 'RATE', help: 'share of token requests, 0-1, that get the fault and delay (default 1: all)' },
  { flag: 'fault-grant-type', env: 'SIMULATOR_FAULT_GRANT_TYPE', arg: 'GRANT', help: 'only requests of this grant get the fault and delay: authorization_code or refresh_token (default both)' },
  { flag: 'fault-times', env: 'SIMULATOR_FAULT_TIMES', arg: 'N', help: 'only the first N such requests get them (default unlimited)' },
  { flag: 'wrong-merchant-id', env: 'SIMULATOR_WRONG_MERCHANT_ID', arg: 'ID', help: 'the merchant_id claim of wrong_merchant answers (default other_merchant)' },
  { flag: 'state-file', env: 'SIMULATOR_STATE_FILE', arg: 'PATH', help: 'keep issued refresh tokens in this file across restarts (default: none, forgotten at exit)' },
  { flag: 'tls-cert', env: 'SIMULATOR_TLS_CERT_FILE', arg: 'PATH', help: 'PEM server certificate; with --tls-key and --tls-ca: HTTPS requiring a client certificate' },
  { flag: 'tls-key', env: 'SIMULATOR_TLS_KEY_FILE', arg: 'PATH', help: 'PEM key of that certificate' },
  { flag: 'tls-ca', env: 'SIMULATOR_TLS_CA_FILE', arg: 'PATH', help: 'PEM CA that client certificates must be signed by' },
  { flag: 'help', help: 'print this help and exit' }
]

/** What the simulator is built with: SimulatorOptions minus the parts only a program can supply. */
export type SimulatorSettings = Pick<SimulatorOptions,
'clientId' | 'clientSecret' | 'redirectUrl' | 'partnerName' | 'defaultMerchantId' | 'accessTokenTtlSeconds' |
'refreshTokenTtlSeconds' | 'codeTtlSeconds' | 'rotateRefreshTokens' | 'oauthErrorStatus' | 'behavior' | 'stateFile'>

export type SimulatorArgs =
  | { help: true }
  | { help: false, host: string, port: number, tls: { cert: string, key: string, ca: string } | undefined, options: SimulatorSettings }

export class SimulatorArgsError extends Error {
  constructor (readonly problems: string[]) { super(problems.join('; ')) }
}

export function simulatorHelp (): string {
  const lines = [
    'Usage: npm run simulator -- [options]',
    '',
    'The CyberSource simulator (development only). Each option may instead be given as the',
    'environment variable shown beside it; the option wins. Empty variables count as unset.',
    ''
  ]
  for (const s of SWITCHES) {
    lines.push(`  ${s.flag === 'help' ? '-h, ' : ''}--${s.flag}${s.arg === undefined ? '' : ` ${s.arg}`}${s.env === undefined ? '' : `  (${s.env})`}`)
    lines.push(`      ${s.help}`)
  }
  return lines.join('\n') + '\n'
}

const TRUE = new Set(['1', 'true', 'yes', 'on'])
const FALSE = new Set(['0', 'false', 'no', 'off'])

export function parseSimulatorArgs (argv: readonly string[], env: Readonly<Record<string, string | undefined>>): SimulatorArgs {
  let values: Record<string, string | boolean | undefined>
  try {
    values = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      allowNegative: true,
      options: Object.fromEntries(SWITCHES.map(s => [s.flag, { type: s.arg === undefined ? 'boolean' : 'string', ...(s.flag === 'help' ? { short: 'h' } : {}) }]))
    }).values as Record<string, string | boolean | undefined>
  } catch (err) {
    throw new SimulatorArgsError([(err as Error).message])
  }
  if (values.help === true) return { help: true }

  const problems: string[] = []
  const name = (flag: string): string => {
    const env = SWITCHES.find(s => s.flag === flag)?.env
    return env === undefined ? `--${flag}` : `--${flag} (${env})`
  }
  const envValue = (key: string): string | undefined => {
    const v = env[key]
    return v === undefined || v === '' ? undefined : v
  }
  // The flag, else its environment variable.
  const raw = (flag: string): string | boolean | undefined => {
    if (values[flag] !== undefined) return values[flag]
    const key = SWITCHES.find(s => s.flag === flag)?.env
    return key === undefined ? undefined : envValue(key)
  }
  const str = (flag: string): string | undefined => {
    const v = raw(flag)
    return typeof v === 'string' ? v : undefined
  }
  const int = (flag: string, min: number, max: number): number | undefined => {
    const v = str(flag)
    if (v === undefined) return undefined
    const n = /^\d+$/.test(v) ? Number(v) : NaN
    if (Number.isSafeInteger(n) && n >= min && n <= max) return n
    problems.push(`${name(flag)}: must be a whole number from ${min} to ${max}`)
    return undefined
  }
  const oneOf = <T extends string>(flag: string, allowed: readonly T[]): T | undefined => {
    const v = str(flag)
    if (v === undefined || (allowed as readonly string[]).includes(v)) return v as T | undefined
    problems.push(`${name(flag)}: must be one of ${allowed.join(', ')}`)
    return undefined
  }
  const id = (flag: string): string | undefined => {
    const v = str(flag)
    if (v === undefined || ID_PATTERN.test(v)) return v
    problems.push(`${name(flag)}: must be 1-64 letters, digits, "_" or "-"`)
    return undefined
  }
  const bool = (flag: string): boolean | undefined => {
    const v = raw(flag)
    if (typeof v !== 'string') return v
    if (TRUE.has(v.toLowerCase())) return true
    if (FALSE.has(v.toLowerCase())) return false
    problems.push(`${name(flag)}: must be true or false`)
    return undefined
  }

  const host = str('host') ?? '127.0.0.1'
  const port = int('port', 0, 65535) ?? 4010
  const redirectUrl = str('redirect-url')
  if (redirectUrl !== undefined && !/^https?:\/\/[^/]/i.test(redirectUrl)) problems.push(`${name('redirect-url')}: must be an absolute http(s) URL`)

  let failureRate: number | undefined
  const rate = str('failure-rate')
  if (rate !== undefined) {
    failureRate = /^(0|1|0?\.\d+|1\.0*)$/.test(rate) ? Number(rate) : undefined
    if (failureRate === undefined) problems.push(`${name('failure-rate')}: must be a number from 0 to 1`)
  }
  const behavior: Behavior = {
    fault: oneOf<Fault>('fault', FAULTS),
    delayMs: int('delay-ms', 0, 600_000),
    failureRate,
    grantType: oneOf('fault-grant-type', ['authorization_code', 'refresh_token'] as const),
    times: int('fault-times', 1, Number.MAX_SAFE_INTEGER),
    merchantId: id('wrong-merchant-id')
  }

  const tlsPaths = { cert: str('tls-cert'), key: str('tls-key'), ca: str('tls-ca') }
  const given = Object.values(tlsPaths).filter(v => v !== undefined).length
  if (given > 0 && given < 3) problems.push(`${name('tls-cert')}, ${name('tls-key')} and ${name('tls-ca')} go together (mutual TLS)`)

  const options: SimulatorSettings = {
    clientId: str('client-id') ?? 'demo-client-id',
    clientSecret: envValue('CYBS_CLIENT_SECRET') ?? 'demo-client-secret',
    redirectUrl,
    partnerName: str('partner-name'),
    defaultMerchantId: id('merchant-id'),
    accessTokenTtlSeconds: int('access-token-ttl', 1, 315_360_000),
    refreshTokenTtlSeconds: int('refresh-token-ttl', 1, 315_360_000),
    codeTtlSeconds: int('code-ttl', 1, 86_400),
    rotateRefreshTokens: bool('rotate-refresh-tokens'),
    oauthErrorStatus: int('oauth-error-status', 400, 599),
    stateFile: str('state-file')
  }
  const setBehavior = Object.fromEntries(Object.entries(behavior).filter(([, v]) => v !== undefined)) as Behavior
  if (Object.keys(setBehavior).length > 0) options.behavior = setBehavior
  if (problems.length > 0) throw new SimulatorArgsError(problems)
  for (const k of Object.keys(options) as Array<keyof SimulatorSettings>) if (options[k] === undefined) delete options[k]
  return { help: false, host, port, tls: given === 3 ? tlsPaths as { cert: string, key: string, ca: string } : undefined, options }
}
