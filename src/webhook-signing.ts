// Standard Webhooks signatures (standardwebhooks): `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`
// once per configured secret, space-separated, so receivers keep verifying through a rotation.
import { Webhook } from 'standardwebhooks'

export interface WebhookSigner {
  /** The webhook-* headers of one attempt, timestamped `at`. */
  headers: (msgId: string, body: string, at: Date) => { 'webhook-id': string, 'webhook-timestamp': string, 'webhook-signature': string }
}

export function createWebhookSigner (secrets: Buffer[]): WebhookSigner {
  if (secrets.length === 0) throw new Error('at least one webhook secret is required')
  // The raw key bytes (WEBHOOK_SECRET is decoded at boot).
  const signers = secrets.map(s => new Webhook(s, { format: 'raw' }))
  return {
    headers: (msgId, body, at) => ({
      'webhook-id': msgId,
      'webhook-timestamp': String(Math.floor(at.getTime() / 1000)),
      'webhook-signature': signers.map(w => w.sign(msgId, at, body)).join(' ')
    })
  }
}
