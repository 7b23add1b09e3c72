import t from 'tap'
import { readFileSync } from 'node:fs'
import { SWITCHES, SimulatorArgsError, parseSimulatorArgs, simulatorHelp } from '../../../src/simulator/cli.js'
import { DEFAULT_OAUTH_ERROR_STATUS } from '../../../src/simulator/app.js'

const problems = (argv: string[], env: Record<string, string> = {}): string[] => {
  try {
    parseSimulatorArgs(argv, env)
  } catch (err) {
    if (err instanceof SimulatorArgsError) return err.problems
    throw err
  }
  return []
}

t.test('defaults', async t => {
  t.same(parseSimulatorArgs([], {}), {
    help: false,
    host: '127.0.0.1',
    port: 4010,
    tls: undefined,
    options: { clientId: 'demo-client-id', clientSecret: 'demo-client-secret' }
  })
  t.equal(DEFAULT_OAUTH_ERROR_STATUS, 500, 'the simulator itself defaults to CyberSource\'s 500')
})

t.test('every switch as a flag', async t => {
  const args = parseSimulatorArgs([
    '--host', '0.0.0.0', '--port', '0', '--client-id', 'cid', '--redirect-url', 'http://127.0.0.1:3000/oauth/callback',
    '--partner-name', 'Acme', '--merchant-id', 'acme_1', '--access-token-ttl', '60', '--refresh-token-ttl', '3600',
    '--code-ttl', '30', '--rotate-refresh-tokens', '--oauth-error-status', '400', '--fault', 'wrong_merchant',
    '--delay-ms', '250', '--failure-rate', '0.25', '--fault-grant-type', 'refresh_token', '--fault-times', '3',
    '--wrong-merchant-id', 'intruder', '--state-file', '.data/sim.json',
    '--tls-cert', 'c.pem', '--tls-key', 'k.pem', '--tls-ca', 'ca.pem'
  ], { CYBS_CLIENT_SECRET: 'from-env-only' })
  t.same(args, {
    help: false,
    host: '0.0.0.0',
    port: 0,
    tls: { cert: 'c.pem', key: 'k.pem', ca: 'ca.pem' },
    options: {
      clientId: 'cid',
      clientSecret: 'from-env-only',
      redirectUrl: 'http://127.0.0.1:3000/oauth/callback',
      partnerName: 'Acme',
      defaultMerchantId: 'acme_1',
      accessTokenTtlSeconds: 60,
      refreshTokenTtlSeconds: 3600,
      codeTtlSeconds: 30,
      rotateRefreshTokens: true,
      oauthErrorStatus: 400,
      stateFile: '.data/sim.json',
      behavior: { fault: 'wrong_merchant', delayMs: 250, failureRate: 0.25, grantType: 'refresh_token', times: 3, merchantId: 'intruder' }
    }
  })
})

t.test('every switch as an environment variable', async t => {
  const env = {
    SIMULATOR_HOST: '::1',
    SIMULATOR_PORT: '4999',
    CYBS_CLIENT_ID: 'cid',
    CYBS_CLIENT_SECRET: 'sec',
    CYBS_REDIRECT_URL: 'https://partner.example/cb',
    SIMULATOR_PARTNER_NAME: 'Acme',
    SIMULATOR_MERCHANT_ID: 'acme_1',
    SIMULATOR_ACCESS_TOKEN_TTL: '61',
    SIMULATOR_REFRESH_TOKEN_TTL: '3601',
    SIMULATOR_CODE_TTL: '31',
    SIMULATOR_ROTATE_REFRESH_TOKENS: 'true',
    SIMULATOR_OAUTH_ERROR_STATUS: '400',
    SIMULATOR_FAULT: 'huge',
    SIMULATOR_DELAY_MS: '5000',
    SIMULATOR_FAILURE_RATE: '1',
    SIMULATOR_FAULT_GRANT_TYPE: 'authorization_code',
    SIMULATOR_FAULT_TIMES: '1',
    SIMULATOR_WRONG_MERCHANT_ID: 'x',
    SIMULATOR_STATE_FILE: '/tmp/s.json',
    SIMULATOR_TLS_CERT_FILE: 'c',
    SIMULATOR_TLS_KEY_FILE: 'k',
    SIMULATOR_TLS_CA_FILE: 'a'
  }
  t.same(parseSimulatorArgs([], env), {
    help: false,
    host: '::1',
    port: 4999,
    tls: { cert: 'c', key: 'k', ca: 'a' },
    options: {
      clientId: 'cid',
      clientSecret: 'sec',
      redirectUrl: 'https://partner.example/cb',
      partnerName: 'Acme',
      defaultMerchantId: 'acme_1',
      accessTokenTtlSeconds: 61,
      refreshTokenTtlSeconds: 3601,
      codeTtlSeconds: 31,
      rotateRefreshTokens: true,
      oauthErrorStatus: 400,
      stateFile: '/tmp/s.json',
      behavior: { fault: 'huge', delayMs: 5000, failureRate: 1, grantType: 'authorization_code', times: 1, merchantId: 'x' }
    }
  })
})

t.test('a flag wins over its variable; empty variables are unset', async t => {
  const env = { SIMULATOR_PORT: '5000', SIMULATOR_ROTATE_REFRESH_TOKENS: 'yes', SIMULATOR_FAULT: '', CYBS_REDIRECT_URL: '' }
  const args = parseSimulatorArgs(['--port=5001', '--no-rotate-refresh-tokens'], env)
  t.match(args, { port: 5001, options: { rotateRefreshTokens: false } })
  t.notOk('behavior' in (args as { options: object }).options)
  t.notOk('redirectUrl' in (args as { options: object }).options)
  t.match(parseSimulatorArgs([], { SIMULATOR_ROTATE_REFRESH_TOKENS: 'OFF' }), { options: { rotateRefreshTokens: false } })
})

t.test('--help and -h', async t => {
  t.same(parseSimulatorArgs(['--help'], {}), { help: true })
  t.same(parseSimulatorArgs(['-h', '--port', 'nonsense'], {}), { help: true })
  const help = simulatorHelp()
  for (const s of SWITCHES) {
    t.match(help, `--${s.flag}`, s.flag)
    if (s.env !== undefined) t.match(help, s.env, s.env)
  }
})

t.test('docs/simulator.md lists every switch', async t => {
  const doc = readFileSync(new URL('../../../docs/simulator.md', import.meta.url), 'utf8')
  for (const s of SWITCHES) {
    t.match(doc, `\`--${s.flag}`, s.flag)
    if (s.env !== undefined) t.match(doc, `\`${s.env}\``, s.env)
  }
})

t.test('malformed values name the switch and are all reported', async t => {
  const cases: Array<[string[], Record<string, string>, RegExp]> = [
    [['--port', '70000'], {}, /^--port \(SIMULATOR_PORT\): must be a whole number from 0 to 65535$/],
    [[], { SIMULATOR_PORT: '12a' }, /^--port \(SIMULATOR_PORT\)/],
    [['--access-token-ttl', '0'], {}, /^--access-token-ttl/],
    [['--refresh-token-ttl=-5'], {}, /^--refresh-token-ttl/],
    [['--code-ttl', '1.5'], {}, /^--code-ttl/],
    [['--oauth-error-status', '200'], {}, /^--oauth-error-status \(SIMULATOR_OAUTH_ERROR_STATUS\): must be a whole number from 400 to 599$/],
    [['--fault', 'explode'], {}, /^--fault \(SIMULATOR_FAULT\): must be one of none, invalid_grant/],
    [['--delay-ms', '600001'], {}, /^--delay-ms/],
    [['--failure-rate', '1.5'], {}, /^--failure-rate \(SIMULATOR_FAILURE_RATE\): must be a number from 0 to 1$/],
    [['--failure-rate', 'abc'], {}, /^--failure-rate/],
    [['--fault-grant-type', 'password'], {}, /^--fault-grant-type/],
    [['--fault-times', '0'], {}, /^--fault-times/],
    [['--wrong-merchant-id', 'bad id'], {}, /^--wrong-merchant-id/],
    [['--merchant-id', 'x'.repeat(65)], {}, /^--merchant-id/],
    [['--redirect-url', '/relative'], {}, /^--redirect-url/],
    [[], { SIMULATOR_ROTATE_REFRESH_TOKENS: 'maybe' }, /^--rotate-refresh-tokens \(SIMULATOR_ROTATE_REFRESH_TOKENS\): must be true or false$/],
    [['--tls-cert', 'c.pem'], {}, /go together/],
    [['--bogus'], {}, /bogus/],
    [['positional'], {}, /positional/],
    [['--port'], {}, /--port/]
  ]
  for (const [argv, env, expected] of cases) {
    const found = problems(argv, env)
    t.equal(found.length, 1, `${argv.join(' ')} ${JSON.stringify(env)}: ${found.join('; ')}`)
    t.match(found[0], expected)
  }
  t.equal(problems(['--port', 'x', '--fault', 'y', '--failure-rate', '2']).length, 3, 'every problem at once')
})

t.test('failure rates', async t => {
  for (const [given, expected] of [['0', 0], ['1', 1], ['0.5', 0.5], ['.05', 0.05], ['1.0', 1]] as const) {
    t.match(parseSimulatorArgs(['--failure-rate', given], {}), { options: { behavior: { failureRate: expected } } }, given)
  }
})
