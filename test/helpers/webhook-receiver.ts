// A webhook receiver for tests: node:http on 127.0.0.1 that records every request with its raw
// body, answers as the test says (a status, or never), and tracks how many requests for one
// webhook-id were open at once.
import { createServer, type IncomingHttpHeaders } from 'node:http'
import { once } from 'node:events'
import { randomBytes } from 'node:crypto'
import type { AddressInfo } from 'node:net'
import { Webhook } from 'standardwebhooks'

export interface Received { headers: IncomingHttpHeaders, body: string }

/** A status to answer with, or 'hang' (no answer until the client gives up). */
export type Answer = number | 'hang'

export interface Receiver {
  url: string
  port: number
  received: Received[]
  /** How to answer each request (the default answers 204). */
  answer: (fn: (r: Received) => Answer) => void
  /** The most requests for one webhook-id that were open at the same time. */
  maxOpenPerId: () => number
  close: () => Promise<void>
}

/** A fresh `whsec_` secret (as WEBHOOK_SECRET takes it) and its key bytes (as the config holds them). */
export function webhookSecret (): { text: string, key: Buffer } {
  const key = randomBytes(32)
  return { text: `whsec_${key.toString('base64')}`, key }
}

/** The payload if the request verifies under the secret (standardwebhooks, raw body); else throws. */
export function verify (secret: string, r: Received): unknown {
  const headers: Record<string, string> = {}
  for (const [k, v] of Object.entries(r.headers)) if (typeof v === 'string') headers[k] = v
  return new Webhook(secret).verify(r.body, headers)
}

export async function startReceiver (t: { teardown: (fn: () => unknown) => void }, port = 0): Promise<Receiver> {
  const received: Received[] = []
  const open = new Map<string, number>()
  let maxOpen = 0
  let answerWith: (r: Received) => Answer = () => 204
  const server = createServer((req, res) => {
    const id = String(req.headers['webhook-id'])
    const chunks: Buffer[] = []
    open.set(id, (open.get(id) ?? 0) + 1)
    maxOpen = Math.max(maxOpen, open.get(id) ?? 0)
    res.on('close', () => { open.set(id, (open.get(id) ?? 1) - 1) })
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const r = { headers: req.headers, body: Buffer.concat(chunks).toString('utf8') }
      received.push(r)
      const a = answerWith(r)
      if (a !== 'hang') res.writeHead(a).end()
    })
  })
  server.listen(port, '127.0.0.1')
  await once(server, 'listening')
  const close = async (): Promise<void> => {
    if (!server.listening) return
    server.closeAllConnections()
    await new Promise(resolve => server.close(resolve))
  }
  t.teardown(close)
  const bound = (server.address() as AddressInfo).port
  return {
    url: `http://127.0.0.1:${bound}/hooks`,
    port: bound,
    received,
    answer: (fn) => { answerWith = fn },
    maxOpenPerId: () => maxOpen,
    close
  }
}
