// Errors that Node's HTTP server meets before Fastify sees a request (a request or its headers too
// slow, headers too large, a malformed request line, an unsupported Expect header): answered in
// the service's JSON error shape with a correlation id, instead of Node's or Fastify's own.
import { randomUUID } from 'node:crypto'
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import { errorBody } from './errors.js'

const ANSWERS: Record<string, { status: number, message: string }> = {
  ERR_HTTP_REQUEST_TIMEOUT: { status: 408, message: 'The request did not arrive in time' },
  HPE_HEADER_OVERFLOW: { status: 431, message: 'The request headers are too large' }
}
const MALFORMED = { status: 400, message: 'The request is malformed' }

export function clientErrorHandler (err: NodeJS.ErrnoException, socket: Socket): void {
  // A reset connection has nobody to answer.
  if (err.code === 'ECONNRESET' || socket.destroyed) return
  const { status, message } = ANSWERS[err.code ?? ''] ?? MALFORMED
  const id = randomUUID()
  const body = JSON.stringify(errorBody('invalid_request', message, id))
  if (socket.writable) {
    socket.write(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nX-Correlation-Id: ${id}\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n${body}`)
  }
  socket.destroy()
}

/** Node's 'checkExpectation': the request is not handled. */
export function answerExpectationFailed (_req: IncomingMessage, res: ServerResponse): void {
  const id = randomUUID()
  const body = JSON.stringify(errorBody('invalid_request', 'Only "Expect: 100-continue" is supported', id))
  res.writeHead(417, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'x-correlation-id': id,
    'x-content-type-options': 'nosniff'
  }).end(body)
}
