// examples/sdk-payment.ts run as a user runs it (plain `node`, type stripping, a clean environment)
// against the real broker (build(): Redis and the simulator, a merchant onboarded) and a local
// HTTPS catcher in place of CyberSource's /pts/v2/payments that requires the partner's client
// certificate. Each case runs the example once (the SDK alone takes seconds to load).
import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { X509Certificate } from 'node:crypto'
import { createServer } from 'node:https'
import type { IncomingHttpHeaders } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { TLSSocket } from 'node:tls'
import { basename, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build, onboard, type Built } from '../helper.js'
import { testCerts } from '../helpers/certs.js'
import { freePort } from '../helpers/redis.js'

const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const EXAMPLE = fileURLToPath(new URL('../../examples/sdk-payment.ts', import.meta.url))
const PAYMENT_ID = '7431650284176540904807'
/** From test/routes/internal-merchants.test.ts: past MIN_VALIDITY, so a lookup must refresh first. */
const NEARLY_EXPIRED_MS = 870_000
const certs = testCerts()

interface Caught { method?: string, url?: string, headers: IncomingHttpHeaders, peerFingerprint?: string, peerCN?: string | string[], body: string }

/** HTTPS on 127.0.0.1 that only completes a handshake with a client certificate signed by the test CA. */
async function startCatcher (t: Test, refusal?: { status: number, body: unknown }): Promise<{ host: string, caught: Caught[] }> {
  const caught: Caught[] = []
  const server = createServer({ key: certs.server.key, cert: certs.server.cert, ca: certs.ca.cert, requestCert: true, rejectUnauthorized: true }, (req, res) => {
    let body = ''
    req.setEncoding('utf8').on('data', (chunk: string) => { body += chunk })
    req.on('end', () => {
      const peer = (req.socket as TLSSocket).getPeerCertificate()
      caught.push({ method: req.method, url: req.url, headers: req.headers, peerFingerprint: peer.fingerprint256, peerCN: peer.subject?.CN, body })
      if (req.method !== 'POST' || req.url !== '/pts/v2/payments') return res.writeHead(404).end()
      if (refusal !== undefined) return res.writeHead(refusal.status, { 'content-type': 'application/hal+json' }).end(JSON.stringify(refusal.body))
      const code = (JSON.parse(body) as { clientReferenceInformation?: { code?: string } }).clientReferenceInformation?.code
      res.writeHead(201, { 'content-type': 'application/hal+json' }).end(JSON.stringify({
        _links: { self: { href: `/pts/v2/payments/${PAYMENT_ID}`, method: 'GET' } },
        id: PAYMENT_ID,
        submitTimeUtc: new Date().toISOString().replace(/\.\d+/, ''),
        status: 'AUTHORIZED',
        reconciliationId: '74316502841765409',
        clientReferenceInformation: { code },
        orderInformation: { amountDetails: { authorizedAmount: '102.21', currency: 'USD' } },
        processorInformation: { approvalCode: '888888', responseCode: '100' }
      }))
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise(resolve => server.close(resolve))
  })
  return { host: `127.0.0.1:${(server.address() as AddressInfo).port}`, caught }
}

interface Broker { url: string, apiKey: string }

/** The broker listening on 127.0.0.1, with a clock the test can move and a count of the HTTP requests it got. */
async function startBroker (t: Test): Promise<Broker & { b: Built, advance: (ms: number) => void, requests: () => number }> {
  let offset = 0
  const now = (): number => Date.now() + offset
  const b = await build(t, { now, simulatorOptions: { now } })
  await b.app.listen({ host: '127.0.0.1', port: 0 })
  let requests = 0
  b.app.server.on('request', () => { requests++ })
  return {
    b,
    url: `http://127.0.0.1:${(b.app.server.address() as AddressInfo).port}`,
    // The configured internal API caller `payments` (test/helper.ts).
    apiKey: b.secrets.apiSecret,
    advance: (ms) => { offset += ms },
    requests: () => requests
  }
}

async function onboarded (t: Test, b: Built, merchantId: string): Promise<string> {
  t.equal((await onboard(b, merchantId)).statusCode, 200, 'merchant onboarded')
  const res = await b.app.inject({ url: `/internal/v1/merchants/${merchantId}/access-token`, headers: b.auth })
  t.equal(res.statusCode, 200, 'the broker serves a token')
  return res.json().access_token
}

function exampleEnv (broker: Broker, cybsHost: string, merchantId: string): Record<string, string> {
  return {
    BROKER_URL: broker.url,
    BROKER_API_KEY: broker.apiKey,
    MERCHANT_ID: merchantId,
    // The SDK's runEnvironment is a bare host[:port] and its base URL https://<runEnvironment>.
    CYBS_API_HOST: cybsHost,
    CYBS_CLIENT_CERT_DIR: dirname(certs.client.certFile),
    CYBS_CLIENT_CERT: basename(certs.client.certFile),
    CYBS_CLIENT_KEY: basename(certs.client.keyFile),
    CYBS_CA_CERT: certs.ca.certFile
  }
}

/** Runs the example as a user would: only PATH is inherited (not tap's loader options). */
async function runExample (env: Record<string, string>): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const child = spawn(process.execPath, [EXAMPLE], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (s: string) => { stdout += s })
  child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s })
  const [code] = await once(child, 'close') as [number | null]
  return { code, stdout, stderr }
}

t.test('authorizes a payment with the broker token, over mutual TLS', async t => {
  const catcher = await startCatcher(t)
  const broker = await startBroker(t)
  const mid = 'm_sdk_example'
  const token = await onboarded(t, broker.b, mid)

  const run = await runExample(exampleEnv(broker, catcher.host, mid))
  t.equal(run.code, 0, `exit code (stderr: ${run.stderr})`)
  t.equal(run.stdout, `payment ${PAYMENT_ID}: AUTHORIZED (HTTP 201)\n`, 'prints the payment id and status')
  t.equal(run.stderr, '')
  t.notOk(run.stdout.includes(token) || run.stderr.includes(token), 'the access token is never printed')

  t.equal(catcher.caught.length, 1, 'one request reached CyberSource')
  const [req] = catcher.caught
  if (req === undefined) return
  t.match(req, { method: 'POST', url: '/pts/v2/payments' })
  t.equal(req.headers.authorization, `Bearer ${token}`, 'the broker token as Bearer')
  t.equal(req.peerFingerprint, new X509Certificate(certs.client.cert).fingerprint256, 'the partner client certificate was presented')
  t.equal(req.peerCN, certs.client.subjectCN)
  t.equal(req.headers['v-c-sdk-telemetry-merchant-id'], mid)
  t.notOk(JSON.stringify(req).includes('held-by-cybs-oauth-broker'), 'the refresh-token placeholder is not sent')
  t.match(JSON.parse(req.body), {
    clientReferenceInformation: { code: /^order-\d+$/ },
    processingInformation: { capture: false },
    paymentInformation: { card: { number: '4111111111111111', expirationMonth: '12', expirationYear: '2031' } },
    orderInformation: { amountDetails: { totalAmount: '102.21', currency: 'USD' }, billTo: { country: 'US', email: 'test@cybs.com' } }
  }, 'a CreatePaymentRequest body')
})

t.test('broker answers 409 reauthorization_required: exits 1 with the reason, no payment call', async t => {
  const catcher = await startCatcher(t)
  const broker = await startBroker(t)
  const mid = 'm_sdk_revoked'
  const token = await onboarded(t, broker.b, mid)
  t.equal(broker.b.sim.control.revokeRefreshTokens(mid), 1)
  broker.advance(NEARLY_EXPIRED_MS)

  const run = await runExample(exampleEnv(broker, catcher.host, mid))
  t.equal(run.code, 1)
  t.equal(run.stdout, '')
  t.match(run.stderr, /^sdk-payment: broker answered 409 reauthorization_required: .+ \(correlation id [^-)][^)]*\)\n$/)
  t.notOk(run.stderr.includes(token))
  t.equal(catcher.caught.length, 0, 'CyberSource was not called')
})

t.test('CyberSource refuses the payment: exits 1 with its answer, never the token', async t => {
  const refusal = { submitTimeUtc: '2031-01-01T00:00:00Z', status: 'INVALID_REQUEST', reason: 'MISSING_FIELD', message: 'Declined - The request is missing one or more fields' }
  const catcher = await startCatcher(t, { status: 400, body: refusal })
  const broker = await startBroker(t)
  const mid = 'm_sdk_refused'
  const token = await onboarded(t, broker.b, mid)

  const run = await runExample(exampleEnv(broker, catcher.host, mid))
  t.equal(run.code, 1)
  t.equal(run.stdout, '')
  t.equal(run.stderr, `sdk-payment: CyberSource answered 400: ${JSON.stringify(refusal)}\n`)
  t.equal(catcher.caught.length, 1)
  t.equal(catcher.caught[0]?.headers.authorization, `Bearer ${token}`, 'the token was sent, and not printed')
})

t.test('missing configuration: exits 1 naming the variable, before any call', async t => {
  const catcher = await startCatcher(t)
  const broker = await startBroker(t)
  const mid = 'm_sdk_unconfigured'
  await onboarded(t, broker.b, mid)
  const env = exampleEnv(broker, catcher.host, mid)
  delete env.CYBS_CLIENT_CERT_DIR
  const run = await runExample(env)
  t.equal(run.code, 1)
  t.equal(run.stderr, 'sdk-payment: CYBS_CLIENT_CERT_DIR is required (see the header of this file)\n')
  t.equal(broker.requests(), 0, 'the broker was not asked')
  t.equal(catcher.caught.length, 0)
})

t.test('broker unreachable: exits 1 saying so', async t => {
  const catcher = await startCatcher(t)
  const env = exampleEnv({ url: `http://127.0.0.1:${await freePort()}`, apiKey: 'k'.repeat(32) }, catcher.host, 'm_any')
  const run = await runExample(env)
  t.equal(run.code, 1)
  t.match(run.stderr, /^sdk-payment: broker unreachable: connect ECONNREFUSED 127\.0\.0\.1:\d+\n$/)
  t.equal(catcher.caught.length, 0)
})
