// A partner's webhook endpoint for the broker's lifecycle events: verify the Standard Webhooks
// signature on the RAW body, acknowledge at once, skip an event already handled, then act on it.
//
//   WEBHOOK_SECRET=whsec_… PORT=4020 node examples/webhook-receiver.ts
//
// WEBHOOK_SECRET is the broker's (a comma list during a rotation: any one of them verifies).
// Node 24 runs this file as it is; your service needs `npm install standardwebhooks`.
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Webhook } from 'standardwebhooks'

interface LifecycleEvent {
  id: string
  type: string
  occurred_at: string
  merchant_id: string | null
  data: Record<string, string | number | boolean | null>
}

const secrets = (process.env.WEBHOOK_SECRET ?? '').split(',').map(s => s.trim()).filter(s => s !== '')
if (secrets.length === 0) {
  process.stderr.write('webhook-receiver: WEBHOOK_SECRET is required (see the header of this file)\n')
  process.exit(1)
}
const verifiers = secrets.map(s => new Webhook(s))
const MAX_BODY = 64 * 1024
// Deliveries are at least once: keep the ids handled (in your database, for a few days).
const handled = new Set<string>()

/** The event if any secret verifies the signature (and the timestamp is within 5 minutes); else undefined. */
function verified (body: Buffer, headers: Record<string, string>): LifecycleEvent | undefined {
  for (const wh of verifiers) {
    try {
      return wh.verify(body, headers) as LifecycleEvent
    } catch {}
  }
  return undefined
}

function handle (event: LifecycleEvent): void {
  // What each type asks of the partner: docs/events.md.
  process.stdout.write(`${event.id} ${event.type} ${event.merchant_id ?? '-'} ${JSON.stringify(event.data)}\n`)
}

const server = createServer((req, res) => {
  if (req.method !== 'POST') return res.writeHead(405).end()
  const chunks: Buffer[] = []
  let size = 0
  req.on('data', (chunk: Buffer) => {
    size += chunk.length
    if (size > MAX_BODY) req.destroy()
    else chunks.push(chunk)
  })
  req.on('end', () => {
    const headers: Record<string, string> = {}
    for (const [k, v] of Object.entries(req.headers)) if (typeof v === 'string') headers[k] = v
    // The bytes as sent: a body parsed and serialized again would not verify.
    const event = verified(Buffer.concat(chunks), headers)
    if (event === undefined) {
      process.stderr.write('webhook-receiver: rejected a request with an invalid signature\n')
      return res.writeHead(400).end()
    }
    // 2xx quickly: anything slower than 10 s counts as a failure and is sent again.
    res.writeHead(204).end()
    if (handled.has(event.id)) return
    handled.add(event.id)
    handle(event)
  })
})

server.listen(Number(process.env.PORT ?? 4020), process.env.HOST ?? '127.0.0.1', () => {
  const { address, port } = server.address() as AddressInfo
  process.stdout.write(`listening on http://${address}:${port}\n`)
})
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => server.close(() => process.exit(0)))
