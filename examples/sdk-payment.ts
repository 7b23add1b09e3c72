// A partner's payment service using CyberSource's official Node SDK with a token from the broker:
// fetch the merchant's access token, then authorize a test card payment in the SDK's `oauth` mode.
//
//   BROKER_URL=http://127.0.0.1:3000 BROKER_API_KEY=… MERCHANT_ID=… \
//   CYBS_CLIENT_CERT_DIR=/run/secrets CYBS_CLIENT_CERT=cybs-client.crt CYBS_CLIENT_KEY=cybs-client.key \
//   node examples/sdk-payment.ts
//
// Optional: CYBS_API_HOST (default api-matest.cybersource.com; api-ma.cybersource.com in
// production), CYBS_CA_CERT (a PEM bundle that *replaces* the trusted roots: for a private CA only).
// Node 24 runs this file as it is; your service needs `npm install cybersource-rest-client`.
import cybersource from 'cybersource-rest-client'

interface AccessToken { merchant_id: string, access_token: string, token_type: string, expires_at: string, expires_in: number, scope: string }
interface BrokerError { error?: { code?: string, message?: string, correlation_id?: string } }
// The SDK ships no types: the parts of its callback used here.
interface SdkError { status?: number, code?: string, message?: string, response?: { text?: string } }
interface Payment { id?: string, status?: string }

function env (name: string, fallback?: string): string {
  const value = process.env[name] ?? fallback
  if (value === undefined || value === '') throw new Error(`${name} is required (see the header of this file)`)
  return value
}

/** The broker refreshes tokens itself: ask it before each call instead of keeping a token. */
async function brokerToken (merchantId: string): Promise<AccessToken> {
  const url = `${env('BROKER_URL').replace(/\/+$/, '')}/internal/v1/merchants/${encodeURIComponent(merchantId)}/access-token`
  const res = await fetch(url, { headers: { authorization: `Bearer ${env('BROKER_API_KEY')}` }, signal: AbortSignal.timeout(10_000) })
    .catch((err: Error) => { throw new Error(`broker unreachable: ${(err.cause as Error | undefined)?.message ?? err.message}`) })
  const body = await res.json().catch(() => ({})) as AccessToken & BrokerError
  if (!res.ok) {
    // 409 reauthorization_required: the merchant must connect again. 503: transient, retry later.
    const e = body.error ?? {}
    throw new Error(`broker answered ${res.status} ${e.code ?? ''}: ${e.message ?? ''} (correlation id ${e.correlation_id ?? '-'})`)
  }
  return body
}

/** The SDK's merchant configuration, all but the access token. */
function sdkConfig (merchantId: string): Record<string, unknown> {
  return {
    authenticationType: 'oauth',
    runEnvironment: env('CYBS_API_HOST', 'api-matest.cybersource.com'),
    merchantID: merchantId,
    // Required non-empty by the SDK but never sent: the broker keeps the real refresh token.
    refreshToken: 'held-by-cybs-oauth-broker',
    // Mutual TLS with the partner's certificate, as on the api-ma(test) hosts (PEM files, no passphrase).
    enableClientCert: true,
    clientCertDir: env('CYBS_CLIENT_CERT_DIR'),
    sslClientCert: env('CYBS_CLIENT_CERT'),
    privateKey: env('CYBS_CLIENT_KEY'),
    sslCaCert: process.env.CYBS_CA_CERT,
    // Without this object the SDK throws "Cannot read properties of undefined (reading 'enableLog')".
    // Off: its log masking does not cover access tokens.
    logConfiguration: { enableLog: false }
  }
}

function paymentRequest (): unknown {
  const request = new cybersource.CreatePaymentRequest()
  request.clientReferenceInformation = Object.assign(new cybersource.Ptsv2paymentsClientReferenceInformation(), { code: `order-${Date.now()}` })
  request.processingInformation = Object.assign(new cybersource.Ptsv2paymentsProcessingInformation(), { capture: false, commerceIndicator: 'internet' })
  const card = Object.assign(new cybersource.Ptsv2paymentsPaymentInformationCard(), { number: '4111111111111111', expirationMonth: '12', expirationYear: '2031' })
  request.paymentInformation = Object.assign(new cybersource.Ptsv2paymentsPaymentInformation(), { card })
  const amountDetails = Object.assign(new cybersource.Ptsv2paymentsOrderInformationAmountDetails(), { totalAmount: '102.21', currency: 'USD' })
  const billTo = Object.assign(new cybersource.Ptsv2paymentsOrderInformationBillTo(), {
    firstName: 'John',
    lastName: 'Doe',
    email: 'test@cybs.com',
    phoneNumber: '4158880000',
    address1: '1 Market St',
    locality: 'San Francisco',
    administrativeArea: 'CA',
    postalCode: '94105',
    country: 'US'
  })
  request.orderInformation = Object.assign(new cybersource.Ptsv2paymentsOrderInformation(), { amountDetails, billTo })
  return request
}

/** PaymentsApi is callback-only. A new ApiClient per call: every XxxApi constructor reconfigures the client it gets. */
async function createPayment (config: Record<string, unknown>, request: unknown): Promise<{ status: number, payment: Payment }> {
  const payments = new cybersource.PaymentsApi(config, new cybersource.ApiClient())
  return await new Promise((resolve, reject) => {
    payments.createPayment(request, (error: SdkError | null, payment: Payment, response: { status: number }) => {
      // Never print `error` or `response` whole: they carry the request headers, the token included.
      if (error === null) resolve({ status: response.status, payment })
      else if (error.status !== undefined) reject(new Error(`CyberSource answered ${error.status}: ${error.response?.text ?? ''}`))
      else reject(new Error(`CyberSource call failed: ${error.code ?? ''} ${error.message ?? ''}`))
    })
  })
}

try {
  const merchantId = env('MERCHANT_ID')
  const config = sdkConfig(merchantId)
  const token = await brokerToken(merchantId)
  const { status, payment } = await createPayment({ ...config, accessToken: token.access_token }, paymentRequest())
  console.log(`payment ${payment.id ?? '?'}: ${payment.status ?? '?'} (HTTP ${status})`)
} catch (err) {
  console.error(`sdk-payment: ${(err as Error).message}`)
  process.exitCode = 1
}
