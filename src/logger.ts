// pino options shared by the server, the dev runner and tests. URLs are logged without their
// query string (the callback's carries the authorization code); credentials are redacted.
import pino, { type SerializerFn } from 'pino'
import type { FastifyServerOptions } from 'fastify'

const CENSOR = '[redacted]'

/** Censored wherever they appear one level down in a log line (`{ anything: { code } }`). */
export const NESTED_SECRETS = [
  'authorization', 'access_token', 'refresh_token', 'accessToken', 'refreshToken',
  'client_secret', 'clientSecret', 'code', 'state', 'password', 'secret'
]

/** Censored by pino's own redaction (paths of the req and res serializers). */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'res.headers["set-cookie"]'
]

/** A copy of value with its secret-named own properties censored; value itself when it has none. */
function censorNested (value: unknown): unknown {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return value
  let copy: Record<string, unknown> | undefined
  for (const key of NESTED_SECRETS) {
    if (Object.hasOwn(value, key)) {
      copy ??= Object.assign(Object.create(Object.getPrototypeOf(value) as object | null) as Record<string, unknown>, value)
      copy[key] = CENSOR
    }
  }
  return copy ?? value
}

// The nested secrets are censored here, not with pino `redact` wildcard paths ('*.code'): pino
// runs a wildcard redactor on every value of every line and of every child logger's bindings
// (~15 µs a line instead of ~4; bench/RESULTS.md). Values with a serializer are censored after it
// (an Error must reach its serializer intact), the others before serialization, by copy. Child
// logger bindings are not censored: only names and ids are bound (reqId, caller, component).
const withCensor = (serialize: SerializerFn): SerializerFn => (value) => censorNested(serialize(value))

export const pathOnly = (url: string): string => {
  const q = url.indexOf('?')
  return q < 0 ? url : url.slice(0, q)
}

export function loggerOptions (level: string, opts: { pretty?: boolean } = {}): FastifyServerOptions['logger'] {
  return {
    level,
    redact: { paths: REDACT_PATHS, censor: CENSOR },
    serializers: {
      req: withCensor((req: { method: string, url: string, id: string }) => ({ method: req.method, url: pathOnly(req.url), id: req.id })),
      res: withCensor((res: { statusCode: number }) => ({ statusCode: res.statusCode })),
      err: withCensor(pino.stdSerializers.err)
    },
    formatters: {
      log (obj) {
        let out = obj
        for (const key in obj) {
          if (key === 'req' || key === 'res' || key === 'err' || !Object.hasOwn(obj, key)) continue
          const value = obj[key]
          const censored = censorNested(value)
          if (censored !== value) {
            if (out === obj) out = { ...obj }
            out[key] = censored
          }
        }
        return out
      }
    },
    ...(opts.pretty === true ? { transport: { target: 'pino-pretty', options: { colorize: true } } } : {})
  }
}
