// The service's logger (pino options shared by the server, the dev runner and tests) and the
// per-request logger. URLs are logged without their query string (the callback's carries the
// authorization code); credentials are redacted.
import type { FastifyBaseLogger } from 'fastify'
import { pino, stdSerializers, type Bindings, type ChildLoggerOptions, type DestinationStream, type LogFn, type Logger, type LoggerOptions } from 'pino'

const SECRET_FIELDS = [
  'authorization', 'access_token', 'refresh_token', 'accessToken', 'refreshToken',
  'client_secret', 'clientSecret', 'code', 'state', 'password', 'secret'
]

// Explicit paths, no wildcards: pino's redactor runs on every line, and a wildcard path ('*.code')
// makes every line cost several times as much. The code logs ids and outcomes, never
// token-bearing objects; these paths catch a top-level slip.
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'res.headers["set-cookie"]',
  ...SECRET_FIELDS
]

export const pathOnly = (url: string): string => {
  const q = url.indexOf('?')
  return q < 0 ? url : url.slice(0, q)
}

/**
 * pino's error serializer, less what a failed Redis command carries: ioredis puts the command's
 * arguments on its errors (`command.args`), and for a write those are ciphertext and metadata.
 * Errors wrapped as a cause are cleaned the same way.
 */
export function serializeError (err: Error): Record<string, unknown> {
  const out = stdSerializers.err(err) as unknown as Record<string, unknown>
  for (let e: Record<string, unknown> | undefined = out, depth = 0; e !== undefined && depth < 8; depth++) {
    const command = e.command as { name?: unknown } | undefined
    if (command !== undefined && command !== null) e.command = { name: command.name }
    delete e.args
    delete e.previousErrors
    // A copy: the cause is the caller's own error object, which logging must not change.
    if (typeof e.cause === 'object' && e.cause !== null) e.cause = { ...e.cause }
    e = typeof e.cause === 'object' && e.cause !== null ? e.cause as Record<string, unknown> : undefined
  }
  return out
}

export function loggerOptions (level: string, opts: { pretty?: boolean } = {}): LoggerOptions {
  return {
    level,
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    serializers: {
      req: (req: { method: string, url: string, id: string }) => ({ method: req.method, url: pathOnly(req.url), id: req.id }),
      res: (res: { statusCode: number }) => ({ statusCode: res.statusCode }),
      err: serializeError
    },
    ...(opts.pretty === true ? { transport: { target: 'pino-pretty', options: { colorize: true } } } : {})
  }
}

/** The root logger: JSON lines at `level` to stdout (or `stream`), or pino-pretty's colours. */
export function createLogger (level: string, opts: { pretty?: boolean, stream?: DestinationStream } = {}): Logger {
  // pino-pretty is a transport, which takes no stream.
  return opts.pretty === true ? pino(loggerOptions(level, opts)) : pino(loggerOptions(level), opts.stream)
}

type LogArgs = Parameters<LogFn>

/**
 * A request's logger (`request.log`, `reply.log`: set by the app's first onRequest hook,
 * src/app.ts) that makes pino's child logger at its first line. A successful lookup writes none
 * (its audit is a summary), and pino serializes a child's bindings at once: made per request, it
 * is a large share of a cached lookup's cost. Bindings added before the first line (the guard's
 * caller) are bound together with the request id.
 */
export class RequestLogger implements FastifyBaseLogger {
  private real: Logger | undefined
  /** Bindings added before the first line (kept as given, not copied). */
  private extra: Bindings | undefined

  constructor (private readonly parent: FastifyBaseLogger, private readonly pending: Bindings) {}

  private get logger (): Logger {
    if (this.real === undefined) this.real = this.parent.child(this.extra === undefined ? this.pending : { ...this.pending, ...this.extra }) as Logger
    return this.real
  }

  get level (): string { return this.real?.level ?? this.parent.level }
  set level (level: string) { this.logger.level = level }

  /** pino's setBindings: added to the child's bindings (made or not yet). */
  setBindings (bindings: Bindings): void {
    if (this.real !== undefined) this.real.setBindings(bindings)
    else this.extra = this.extra === undefined ? bindings : { ...this.extra, ...bindings }
  }

  child (bindings: Bindings, options?: ChildLoggerOptions): FastifyBaseLogger { return this.logger.child(bindings, options) }
  fatal (...args: LogArgs): void { this.logger.fatal(...args) }
  error (...args: LogArgs): void { this.logger.error(...args) }
  warn (...args: LogArgs): void { this.logger.warn(...args) }
  info (...args: LogArgs): void { this.logger.info(...args) }
  debug (...args: LogArgs): void { this.logger.debug(...args) }
  trace (...args: LogArgs): void { this.logger.trace(...args) }
  silent (...args: LogArgs): void { this.logger.silent(...args) }
}
