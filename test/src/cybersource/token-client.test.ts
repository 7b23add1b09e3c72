// The real token client against the simulator over HTTPS with mutual TLS, and against servers
// that never answer (CYBS_TIMEOUT_MS); the CA list it trusts (caBundle).
import t from 'tap'
import { createServer as createTcpServer, type Server as TcpServer, type Socket } from 'node:net'
import { createServer as createTlsServer, rootCertificates } from 'node:tls'
import { Writable } from 'node:stream'
import { pino } from 'pino'
import { caBundle, createTokenClient, type TokenClient, type TokenClientOptions, type TokenSet } from '../../../src/cybersource/token-client.js'
import { CybsError, isCybsError, type CybsErrorKind } from '../../../src/cybersource/errors.js'
import { TOKEN_PATH, buildSimulator, type Simulator, type SimulatorOptions } from '../../../src/simulator/app.js'
import { testCerts } from '../../helpers/certs.js'
import { freePort } from '../../helpers/redis.js'

const CLIENT_ID = 'partner-client-id'
const CLIENT_SECRET = 'partner-client-secret-3b9f0c71d2'
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/
const certs = testCerts()

type Test = { teardown: (fn: () => unknown) => void }
type Asserts = Pick<typeof t, 'ok' | 'equal' | 'match' | 'fail'>

// Everything a test hands out or receives that must never show up in a log line or error message.
const secrets = new Set<string>([CLIENT_SECRET])
const logLines: string[] = []
const errorMessages: string[] = []

interface Sim extends Simulator { tokenUrl: string, code: (merchantId?: string) => string }

async function startSim (test: Test, overrides: Partial<SimulatorOptions> = {}, beforeListen?: (sim: Simulator) => void): Promise<Sim> {
  const sim = buildSimulator({
    clientId: CLIENT_ID,
    clientSecret: CLIENT_SECRET,
    https: { key: certs.server.key, cert: certs.server.cert, ca: certs.ca.cert },
    ...overrides
  })
  beforeListen?.(sim)
  test.teardown(async () => { await sim.app.close() })
  await sim.app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = sim.app.server.address() as { port: number }
  return {
    ...sim,
    tokenUrl: `https://127.0.0.1:${port}${TOKEN_PATH}`,
    code: (merchantId = 'merchant_1') => {
      const code = sim.control.issueCode(merchantId)
      secrets.add(code)
      return code
    }
  }
}

function client (test: Test, tokenUrl: string, overrides: Partial<TokenClientOptions> = {}): TokenClient {
  const sink = new Writable({
    write (chunk: Buffer, _enc, done) {
      logLines.push(chunk.toString())
      done()
    }
  })
  const c = createTokenClient({
    tokenUrl,
    clientId: CLIENT_ID,
    clientSecret: CLIENT_SECRET,
    timeoutMs: 3000,
    tls: { cert: certs.client.cert, key: certs.client.key, ca: certs.ca.cert },
    log: pino({ level: 'trace' }, sink),
    refreshAttempts: 3,
    backoffBaseMs: 5,
    backoffMaxMs: 20,
    ...overrides
  })
  test.teardown(async () => { await c.close() })
  return c
}

function keep (set: TokenSet): TokenSet {
  secrets.add(set.accessToken)
  secrets.add(set.refreshToken)
  return set
}

/** Awaits a call that must fail with a CybsError and returns the error. */
async function failure (test: Asserts, p: Promise<unknown>, kind: CybsErrorKind): Promise<CybsError> {
  try {
    const set = await p
    keep(set as TokenSet)
  } catch (err) {
    test.ok(isCybsError(err), 'a CybsError')
    const e = err as CybsError
    errorMessages.push(e.message, String(e.stack))
    test.equal(e.kind, kind, `kind ${kind} (${e.message})`)
    test.match(e.correlationId, UUID)
    return e
  }
  test.fail(`expected a ${kind} failure, got a token set`)
  return new CybsError(kind, 'none', '')
}

t.test('code exchange over mutual TLS', async t => {
  const clock = { ms: Date.UTC(2030, 5, 1) }
  const sentAt = clock.ms
  // The request "takes" 60 s on the client's clock: expiries must be measured from when it was sent.
  const sim = await startSim(t, { accessTokenTtlSeconds: 900, refreshTokenTtlSeconds: 31_536_000, scopes: ['payments', 'transactions'] },
    s => s.app.addHook('onRequest', async () => { clock.ms += 60_000 }))
  const c = client(t, sim.tokenUrl, { now: () => clock.ms })
  const code = sim.code('merchant_42')
  const set = keep(await c.exchangeCode(code))

  t.match(set, {
    accessToken: /^eyJ[\w-]+\.[\w-]+\.[\w-]+$/,
    refreshToken: /^eyJ[\w-]+\.[\w-]+\.[\w-]+$/,
    tokenType: 'Bearer',
    scope: 'payments transactions',
    clientStatus: 'active',
    merchantId: 'merchant_42'
  })
  t.not(set.accessToken, set.refreshToken)
  t.equal(set.accessTokenExpiresAt, sentAt + 900_000)
  t.equal(set.refreshTokenExpiresAt, sentAt + 31_536_000_000)

  const records = sim.control.requests()
  t.equal(records.length, 1)
  const r = records[0]
  t.equal(r.method, 'POST')
  t.equal(r.url, TOKEN_PATH, 'nothing in the query string')
  t.match(r.headers['content-type'], /^application\/x-www-form-urlencoded\b/)
  t.match(r.headers.accept, /^application\/json\b/)
  t.notOk('authorization' in r.headers, 'client authentication is in the body only')
  t.same(r.form, { client_id: CLIENT_ID, client_secret: CLIENT_SECRET, grant_type: 'authorization_code', code })
  t.match(r.headers['v-c-client-correlation-id'], UUID)
  t.equal(set.correlationId, r.headers['v-c-client-correlation-id'])
  t.same(r.clientCertificate, { presented: true, subjectCN: certs.client.subjectCN })
  t.same(sim.control.stats(), { exchanges: 1, refreshes: 0, failures: 0 })
})

t.test('refresh over mutual TLS', async t => {
  const sim = await startSim(t, { accessTokenTtlSeconds: 600, refreshTokenTtlSeconds: 7200 })
  const c = client(t, sim.tokenUrl)
  const first = keep(await c.exchangeCode(sim.code('merchant_7')))

  const before = Date.now()
  const set = keep(await c.refresh(first.refreshToken))
  const after = Date.now()
  t.not(set.accessToken, first.accessToken)
  t.equal(set.refreshToken, first.refreshToken, 'the simulator keeps the refresh token by default')
  t.equal(set.merchantId, 'merchant_7')
  t.ok(set.accessTokenExpiresAt >= before + 600_000 && set.accessTokenExpiresAt <= after + 600_000)
  t.ok(set.refreshTokenExpiresAt !== undefined && set.refreshTokenExpiresAt >= before + 7_200_000 && set.refreshTokenExpiresAt <= after + 7_200_000)

  const [exchange, refresh] = sim.control.requests()
  t.same(refresh.form, { client_id: CLIENT_ID, client_secret: CLIENT_SECRET, grant_type: 'refresh_token', refresh_token: first.refreshToken })
  t.equal(refresh.url, TOKEN_PATH)
  t.equal(set.correlationId, refresh.headers['v-c-client-correlation-id'])
  t.not(refresh.headers['v-c-client-correlation-id'], exchange.headers['v-c-client-correlation-id'], 'a fresh correlation id per call')
  t.equal(refresh.clientCertificate.presented, true)
  t.same(sim.control.stats(), { exchanges: 1, refreshes: 1, failures: 0 })
})

t.test('a rotated refresh token is returned', async t => {
  const sim = await startSim(t, { rotateRefreshTokens: true })
  const c = client(t, sim.tokenUrl)
  const first = keep(await c.exchangeCode(sim.code()))
  const second = keep(await c.refresh(first.refreshToken))
  t.not(second.refreshToken, first.refreshToken)
  const e = await failure(t, c.refresh(first.refreshToken), 'rejected')
  t.equal(e.oauthError, 'invalid_grant')
})

t.test('an encrypted client key with its passphrase', async t => {
  const sim = await startSim(t)
  const c = client(t, sim.tokenUrl, { tls: { cert: certs.client.cert, key: certs.client.encryptedKey, passphrase: certs.client.passphrase, ca: certs.ca.cert } })
  const set = keep(await c.exchangeCode(sim.code('m_enc')))
  t.equal(set.merchantId, 'm_enc')
  t.equal(sim.control.requests()[0].clientCertificate.presented, true)
})

t.test('a token without a merchant_id claim', async t => {
  const sim = await startSim(t, { behavior: { fault: 'no_merchant_id' } })
  const set = keep(await client(t, sim.tokenUrl).exchangeCode(sim.code()))
  t.equal(set.merchantId, undefined)
  t.equal(set.tokenType, 'Bearer')
})

t.test('rejections', async t => {
  for (const status of [400, 500]) {
    t.test(`invalid_grant with HTTP ${status}`, async t => {
      const sim = await startSim(t, { oauthErrorStatus: status })
      const c = client(t, sim.tokenUrl)
      const e = await failure(t, c.exchangeCode('no-such-code'), 'rejected')
      t.equal(e.status, status)
      t.equal(e.oauthError, 'invalid_grant')
      t.equal(e.correlationId, sim.control.requests()[0].headers['v-c-client-correlation-id'])
      t.equal(sim.control.requests().length, 1, 'a rejection is not retried')

      const r = await failure(t, c.refresh('no-such-refresh-token'), 'rejected')
      t.equal(r.oauthError, 'invalid_grant')
      t.equal(sim.control.requests().length, 2, 'a rejected refresh is not retried')
    })
  }

  t.test('a used code', async t => {
    const sim = await startSim(t, { oauthErrorStatus: 500 })
    const c = client(t, sim.tokenUrl)
    const code = sim.code()
    keep(await c.exchangeCode(code))
    t.equal((await failure(t, c.exchangeCode(code), 'rejected')).oauthError, 'invalid_grant')
  })

  t.test('invalid_client', async t => {
    const sim = await startSim(t, { oauthErrorStatus: 500 })
    const c = client(t, sim.tokenUrl, { clientSecret: 'wrong-secret-value' })
    const e = await failure(t, c.exchangeCode(sim.code()), 'rejected')
    t.equal(e.oauthError, 'invalid_client')
    t.equal(e.status, 500)
    t.equal(sim.control.requests().length, 1)
  })

  t.test('faults that look like rejections', async t => {
    const sim = await startSim(t)
    const c = client(t, sim.tokenUrl)
    for (const [fault, oauthError, status] of [['invalid_grant', 'invalid_grant', 500], ['invalid_client', 'invalid_client', 500], ['error_500_oauth', 'server_error', 500]] as const) {
      sim.control.setBehavior({ fault })
      const e = await failure(t, c.exchangeCode(sim.code()), 'rejected')
      t.equal(e.oauthError, oauthError, fault)
      t.equal(e.status, status, fault)
    }
    t.equal(sim.control.requests().length, 3)
  })
})

t.test('unavailable', async t => {
  const cases: Array<[string, SimulatorOptions['behavior'], number | undefined]> = [
    ['500 without a body', { fault: 'error_500_empty' }, 500],
    ['502 with an HTML body', { fault: 'error_502_html' }, 502],
    ['a dropped connection', { fault: 'drop' }, undefined]
  ]
  for (const [name, behavior, status] of cases) {
    t.test(name, async t => {
      const sim = await startSim(t, { behavior })
      const e = await failure(t, client(t, sim.tokenUrl).exchangeCode(sim.code()), 'unavailable')
      t.equal(e.status, status)
      t.equal(sim.control.requests().length, 1, 'a code is never sent twice')
    })
  }

  t.test('a timeout', async t => {
    const sim = await startSim(t, { behavior: { delayMs: 5000 } })
    const e = await failure(t, client(t, sim.tokenUrl, { timeoutMs: 300 }).exchangeCode(sim.code()), 'unavailable')
    t.equal(e.status, undefined)
    t.match(e.message, /timeout/i)
    t.equal(sim.control.requests().length, 1)
  })

  t.test('connection refused', async t => {
    const port = await freePort()
    const e = await failure(t, client(t, `https://127.0.0.1:${port}${TOKEN_PATH}`).exchangeCode('some-code'), 'unavailable')
    t.match(e.message, 'ECONNREFUSED')
  })
})

t.test('protocol errors', async t => {
  const sim = await startSim(t)
  const c = client(t, sim.tokenUrl)
  for (const fault of ['garbage', 'no_access_token', 'not_jwt'] as const) {
    sim.control.setBehavior({ fault })
    const e = await failure(t, c.exchangeCode(sim.code()), 'protocol')
    t.equal(e.status, 200, fault)
  }
  t.equal(sim.control.requests().length, 3, 'not retried')
})

t.test('refresh retries while unavailable, within bounds', async t => {
  t.test('recovers after two failures', async t => {
    const sim = await startSim(t)
    const c = client(t, sim.tokenUrl)
    const first = keep(await c.exchangeCode(sim.code('m_r')))
    sim.control.reset()
    sim.control.setBehavior({ fault: 'error_500_empty', times: 2, grantType: 'refresh_token' })
    const set = keep(await c.refresh(first.refreshToken))
    t.equal(set.merchantId, 'm_r')
    const records = sim.control.requests()
    t.equal(records.length, 3)
    t.ok(records.every(r => r.form.refresh_token === first.refreshToken))
    t.equal(new Set(records.map(r => r.headers['v-c-client-correlation-id'])).size, 3, 'a fresh correlation id per attempt')
    t.equal(set.correlationId, records[2].headers['v-c-client-correlation-id'])
  })

  t.test('recovers after a dropped connection', async t => {
    const sim = await startSim(t)
    const c = client(t, sim.tokenUrl)
    const first = keep(await c.exchangeCode(sim.code()))
    sim.control.reset()
    sim.control.setBehavior({ fault: 'drop', times: 1 })
    keep(await c.refresh(first.refreshToken))
    t.equal(sim.control.requests().length, 2)
  })

  t.test('gives up after the configured attempts', async t => {
    const sim = await startSim(t)
    const c = client(t, sim.tokenUrl, { refreshAttempts: 4 })
    const first = keep(await c.exchangeCode(sim.code()))
    sim.control.reset()
    sim.control.setBehavior({ fault: 'error_502_html' })
    const e = await failure(t, c.refresh(first.refreshToken), 'unavailable')
    t.equal(e.status, 502)
    t.equal(sim.control.requests().length, 4)
  })

  t.test('drain(): no further attempt once shutdown has begun', async t => {
    // Every refresh answers 500 without a body, after 400 ms: the first attempt can be caught in flight.
    const unavailable = { fault: 'error_500_empty', delayMs: 400, grantType: 'refresh_token' } as const
    const start = async (): Promise<{ sim: Sim, c: TokenClient, refreshToken: string }> => {
      const sim = await startSim(t)
      const c = client(t, sim.tokenUrl, { backoffBaseMs: 200, backoffMaxMs: 2000 })
      const { refreshToken } = keep(await c.exchangeCode(sim.code('m_drain')))
      sim.control.reset()
      sim.control.setBehavior(unavailable)
      return { sim, c, refreshToken }
    }
    const refreshes = (sim: Sim): number => sim.control.requests().filter(r => r.form.grant_type === 'refresh_token').length

    t.test('without drain: every attempt is made', async t => {
      const { sim, c, refreshToken } = await start()
      await failure(t, c.refresh(refreshToken), 'unavailable')
      t.equal(refreshes(sim), 3, 'three attempts')
    })

    t.test('drain during the first attempt: refresh() rejects after that attempt', async t => {
      const { sim, c, refreshToken } = await start()
      const pending = failure(t, c.refresh(refreshToken), 'unavailable')
      for (let i = 0; i < 400 && refreshes(sim) === 0; i++) await new Promise(resolve => setTimeout(resolve, 5))
      t.equal(refreshes(sim), 1, 'the first attempt reached CyberSource')
      t.equal(sim.control.stats().failures, 0, 'and is still waiting for its answer')
      c.drain()
      const e = await pending
      t.equal(e.status, 500, 'the first attempt\'s failure is the one reported')
      t.equal(refreshes(sim), 1, 'exactly one request: no retry after drain()')
      t.equal(sim.control.stats().failures, 1)
    })

    t.test('drain during the backoff wait: no next attempt', async t => {
      const sim = await startSim(t)
      let drained = false
      // drain() right after the first failure was logged (retrying: true), i.e. while backing off.
      const sink = new Writable({
        write (chunk: Buffer, _enc, done) {
          const line = chunk.toString()
          logLines.push(line)
          if (!drained && line.includes('"attempt":1') && line.includes('"retrying":true')) {
            drained = true
            setImmediate(() => c.drain())
          }
          done()
        }
      })
      const c = client(t, sim.tokenUrl, { backoffBaseMs: 200, backoffMaxMs: 2000, log: pino({ level: 'trace' }, sink) })
      const { refreshToken } = keep(await c.exchangeCode(sim.code('m_drain_backoff')))
      sim.control.reset()
      sim.control.setBehavior({ fault: 'error_500_empty', grantType: 'refresh_token' })
      await failure(t, c.refresh(refreshToken), 'unavailable')
      t.ok(drained, 'drain() was called after the first failure')
      t.equal(refreshes(sim), 1, 'exactly one request')
    })

    t.test('a call started after drain() makes one attempt', async t => {
      const { sim, c, refreshToken } = await start()
      sim.control.setBehavior({ ...unavailable, delayMs: 0 })
      c.drain()
      await failure(t, c.refresh(refreshToken), 'unavailable')
      t.equal(refreshes(sim), 1)
      sim.control.setBehavior({})
      const set = keep(await c.refresh(refreshToken))
      t.equal(set.merchantId, 'm_drain', 'a drained client still answers a successful attempt')
    })
  })

  t.test('a code exchange is not retried on a 500', async t => {
    const sim = await startSim(t, { behavior: { fault: 'error_500_empty', times: 1 } })
    const c = client(t, sim.tokenUrl)
    await failure(t, c.exchangeCode(sim.code()), 'unavailable')
    t.equal(sim.control.requests().length, 1)
  })

  t.test('a code exchange is not retried after a timeout', async t => {
    const sim = await startSim(t, { behavior: { delayMs: 5000, times: 1 } })
    await failure(t, client(t, sim.tokenUrl, { timeoutMs: 300 }).exchangeCode(sim.code()), 'unavailable')
    t.equal(sim.control.requests().length, 1)
  })
})

t.test('mutual TLS is enforced at the handshake', async t => {
  const sim = await startSim(t)
  const cases: Array<[string, TokenClientOptions['tls']]> = [
    ['no client certificate', { ca: certs.ca.cert }],
    ['a certificate from another CA', { cert: certs.rogueClient.cert, key: certs.rogueClient.key, ca: certs.ca.cert }],
    ['a server certificate the client does not trust', { cert: certs.client.cert, key: certs.client.key, ca: certs.rogueCa.cert }],
    ['no CA (system roots only)', { cert: certs.client.cert, key: certs.client.key }]
  ]
  for (const [name, tls] of cases) {
    const e = await failure(t, client(t, sim.tokenUrl, { tls, refreshAttempts: 1 }).exchangeCode(sim.code()), 'unavailable')
    t.equal(e.status, undefined, name)
  }
  t.same(sim.control.requests(), [], 'no request reached the simulator')
})

t.test('a wrong key passphrase fails cleanly', async t => {
  const sim = await startSim(t)
  const c = client(t, sim.tokenUrl, { tls: { cert: certs.client.cert, key: certs.client.encryptedKey, passphrase: 'not-the-passphrase', ca: certs.ca.cert } })
  await failure(t, c.exchangeCode(sim.code()), 'unavailable')
  t.same(sim.control.requests(), [])
})

t.test('a refresh answer without refresh_token keeps the refresh token that was sent', async t => {
  // CyberSource may leave refresh_token (and its lifetime) out of a refresh answer: the old one stands.
  const sim = await startSim(t, {}, s => s.app.addHook('onSend', async (request, _reply, payload) => {
    const form = request.body as Record<string, unknown> | undefined
    if (form?.grant_type !== 'refresh_token' || typeof payload !== 'string') return payload
    const { refresh_token: _rt, refresh_token_expires_in: _exp, ...rest } = JSON.parse(payload) as Record<string, unknown>
    return JSON.stringify(rest)
  }))
  const c = client(t, sim.tokenUrl)
  const first = keep(await c.exchangeCode(sim.code('m_no_rt')))
  const set = keep(await c.refresh(first.refreshToken))
  t.equal(set.refreshToken, first.refreshToken, 'the refresh token sent')
  t.equal(set.refreshTokenExpiresAt, undefined, 'no new refresh token expiry')
  t.not(set.accessToken, first.accessToken, 'a new access token')
  t.equal(set.merchantId, 'm_no_rt')
  t.same(sim.control.stats(), { exchanges: 1, refreshes: 1, failures: 0 })
})

t.test('caBundle: CYBS_CA_FILE adds to the system roots', async t => {
  t.equal(caBundle(undefined), undefined, 'without an extra CA: Node\'s default roots')
  const bundle = caBundle(certs.ca.cert)
  t.ok(Array.isArray(bundle), 'a list with an extra CA')
  t.ok(rootCertificates.length > 50, `the system roots are there to keep (${rootCertificates.length})`)
  const listed = new Set(bundle)
  t.same(rootCertificates.filter(c => !listed.has(c)).length, 0, 'every system root is kept')
  t.ok(listed.has(certs.ca.cert), 'and the extra CA is added')
  t.equal(bundle?.length, rootCertificates.length + 1, 'nothing else')
})

/** A TCP server that accepts connections and never writes a byte (optionally after a TLS handshake). */
async function silentServer (test: Test, kind: 'tcp' | 'tls'): Promise<{ port: number, reached: () => number }> {
  const sockets = new Set<Socket>()
  let reached = 0
  const hold = (socket: Socket): void => {
    sockets.add(socket)
    socket.once('data', () => { reached++ })
    socket.on('error', () => {})
    socket.on('close', () => sockets.delete(socket))
  }
  const server: TcpServer = kind === 'tcp'
    ? createTcpServer(hold)
    : createTlsServer({ key: certs.server.key, cert: certs.server.cert }, hold)
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  test.teardown(async () => {
    for (const s of sockets) s.destroy()
    await new Promise<void>(resolve => server.close(() => resolve()))
  })
  return { port: (server.address() as { port: number }).port, reached: () => reached }
}

t.test('CYBS_TIMEOUT_MS bounds every attempt, connect and TLS handshake included', async t => {
  // undici's connect timer ticks about every 500 ms: a limit of a second keeps the bound meaningful.
  const timeoutMs = 1000
  const attempts = 2
  const backoffMaxMs = 20
  // Generous: three times the limit per attempt, plus every backoff.
  const boundMs = 3 * timeoutMs * attempts + attempts * backoffMaxMs
  const cases: Array<[string, 'tcp' | 'tls', 'https' | 'http']> = [
    ['a server that never answers the TLS handshake', 'tcp', 'https'],
    ['a TLS server that never sends headers', 'tls', 'https'],
    ['an HTTP server that never sends headers', 'tcp', 'http']
  ]
  for (const [name, kind, scheme] of cases) {
    await t.test(name, async t => {
      const server = await silentServer(t, kind)
      const seconds: number[] = []
      const c = client(t, `${scheme}://127.0.0.1:${server.port}${TOKEN_PATH}`, {
        timeoutMs,
        refreshAttempts: attempts,
        backoffMaxMs,
        observe: (_grant, _outcome, s) => { seconds.push(s) }
      })
      for (const [what, call] of [['exchange', async () => await c.exchangeCode('some-code')], ['refresh', async () => await c.refresh('some-refresh-token')]] as const) {
        seconds.length = 0
        const started = performance.now()
        let timer: NodeJS.Timeout | undefined
        const guard = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`${what}: still pending after ${2 * boundMs} ms`)), 2 * boundMs) })
        const e = await failure(t, Promise.race([call(), guard]).finally(() => clearTimeout(timer)), 'unavailable')
        const ms = performance.now() - started
        t.ok(ms < boundMs, `${what}: failed after ${Math.round(ms)} ms (bound ${boundMs} ms)`)
        t.equal(e.status, undefined, `${what}: no HTTP status`)
        t.ok(seconds.length >= 1 && seconds.length <= attempts, `${what}: ${seconds.length} attempt(s), at most ${attempts}`)
        t.ok(seconds.every(s => s * 1000 < 3 * timeoutMs), `${what}: every attempt within 3 × CYBS_TIMEOUT_MS (${seconds.map(s => Math.round(s * 1000)).join(', ')} ms)`)
      }
      t.ok(server.reached() >= 2, `the server was reached (${server.reached()} connections sent data)`)
    })
  }
})

// Runs last: everything above fed logLines, errorMessages and secrets.
t.test('no secret, code or token in logs or error messages', async t => {
  t.ok(logLines.length > 20, `${logLines.length} log lines captured`)
  t.ok(errorMessages.length > 20, `${errorMessages.length} error messages captured`)
  t.ok(secrets.size > 20, `${secrets.size} secrets tracked`)
  const text = [...logLines, ...errorMessages].join('\n')
  t.same([...secrets].filter(s => text.includes(s)).map(s => `${s.slice(0, 12)}…`), [], 'no tracked secret in the text')
  t.notMatch(text, 'eyJ', 'no JWT-looking string at all')
  t.notMatch(text, CLIENT_SECRET)
  t.match(text, /"correlation_id":"[0-9a-f-]{36}"/, 'logs carry correlation ids')
})
