// The second listener (INTERNAL_PORT): which routes each listener serves, and the server pair that
// Fastify runs on when there are two. One Fastify instance serves both ports, so the service keeps
// one set of Redis connections, one token cache and one metrics registry; a second instance would
// double them all.
import { Server, type IncomingMessage, type RequestListener, type ServerOptions } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import type { HostPort } from './config.js'

/** The public listener serves the browser routes and the probes; the internal one all the rest. */
const PUBLIC_SEGMENTS = new Set(['oauth', 'health'])
const PUBLIC_ONLY = 'oauth'
const SEGMENT_ENDS = ['/', '?', '#']

/** Whether a listener serves the routes under a path's first segment. */
export function serves (internal: boolean, segment: string): boolean {
  return internal ? segment !== PUBLIC_ONLY : PUBLIC_SEGMENTS.has(segment)
}

/** The URL of a listening server's address, for its log line. */
export function addressUrl (address: AddressInfo | string | null): string {
  if (address === null || typeof address === 'string') return String(address)
  return `http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`
}

/** The server options Fastify passes to a serverFactory: its processed copy of the given ones. */
interface FactoryOptions {
  http?: ServerOptions
  keepAliveTimeout: number
  requestTimeout: number
  connectionTimeout: number
  maxRequestsPerSocket?: number
}

/** As Fastify configures its own HTTP/1 server (lib/server.js getServerInstance). */
function configure (server: Server, options: FactoryOptions): Server {
  server.keepAliveTimeout = options.keepAliveTimeout
  server.requestTimeout = options.requestTimeout
  server.setTimeout(options.connectionTimeout)
  if ((options.maxRequestsPerSocket ?? 0) > 0) server.maxRequestsPerSocket = options.maxRequestsPerSocket ?? null
  return server
}

/**
 * Fastify's server (given through its `serverFactory` option) with the internal listener beside
 * it, fed the same handler. The pair listens and closes as one, so Fastify's own lifecycle covers
 * both: listen() binds the internal port first and fails if either bind fails; close() stops both
 * and calls back when both are drained, before the onClose hooks release Redis. The routing
 * decision rests on which server accepted the socket, never on what the client sent.
 */
export class ListenerPair extends Server {
  readonly internal: Server
  readonly #address: HostPort
  readonly #sockets = new WeakSet<Socket>()
  readonly #onListening: (url: string) => void

  constructor (handler: RequestListener, fastifyOptions: Record<string, unknown>, address: HostPort, onListening: (url: string) => void) {
    const options = fastifyOptions as unknown as FactoryOptions
    super(options.http ?? {}, handler)
    configure(this, options)
    this.internal = configure(new Server(options.http ?? {}, handler), options)
    this.internal.on('connection', (socket: Socket) => { this.#sockets.add(socket) })
    this.#address = address
    this.#onListening = onListening
  }

  /** Whether the internal listener accepted this socket. */
  isInternal (socket: Socket): boolean {
    return this.#sockets.has(socket)
  }

  /**
   * The URL the router sees: the request's own, or, for a route the accepting listener does not
   * serve, one whose first segment no route has ('~' repeated: same length, same query, same
   * malformed escapes), so that the answer is an unknown route's in every detail (body parsing,
   * parameter limits, headers), not merely the same 404. A first segment that is not a plain
   * origin-form one (absolute-form URL, bad escape) is left alone: the onRequest check of the
   * matched route covers it (app.ts).
   */
  rewrite (req: IncomingMessage): string {
    const url = req.url ?? '/'
    if (url.charCodeAt(0) !== 47 /* / */) return url
    let end = url.length
    for (const stop of SEGMENT_ENDS) {
      const at = url.indexOf(stop, 1)
      if (at !== -1 && at < end) end = at
    }
    let segment: string
    try {
      segment = decodeURIComponent(url.slice(1, end))
    } catch {
      return url
    }
    return serves(this.isInternal(req.socket), segment) ? url : `/${'~'.repeat(end - 1)}${url.slice(end)}`
  }

  override listen (...args: unknown[]): this {
    const listenMain = (): void => { Reflect.apply(Server.prototype.listen, this, args) }
    // A retry after the public port failed: the internal one is bound already.
    if (this.internal.listening) {
      listenMain()
      return this
    }
    const failed = (err: Error): void => {
      this.internal.off('listening', bound)
      // Fastify waits for the main server's 'listening' or 'error'.
      this.emit('error', err)
    }
    const bound = (): void => {
      this.internal.off('error', failed)
      this.#onListening(addressUrl(this.internal.address()))
      // The public port failing leaves nothing listening.
      const mainFailed = (): void => { this.internal.close() }
      this.once('error', mainFailed).once('listening', () => this.off('error', mainFailed))
      listenMain()
    }
    this.internal.once('error', failed).once('listening', bound)
    this.internal.listen({ host: this.#address.host, port: this.#address.port })
    return this
  }

  override close (callback?: (err?: Error) => void): this {
    let pending = 2
    let first: Error | undefined
    const done = (err?: Error): void => {
      if (err !== undefined && (err as NodeJS.ErrnoException).code !== 'ERR_SERVER_NOT_RUNNING') first ??= err
      if (--pending === 0) callback?.(first)
    }
    this.internal.close(done)
    super.close(done)
    return this
  }

  override closeIdleConnections (): void {
    super.closeIdleConnections()
    this.internal.closeIdleConnections()
  }
}
