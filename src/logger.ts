// pino options shared by the server, the dev runner and tests. URLs are logged without their
// query string (the callback's carries the authorization code); credentials are redacted.
import type { FastifyServerOptions } from 'fastify'

const SECRET_FIELDS = [
  'authorization', 'access_token', 'refresh_token', 'accessToken', 'refreshToken',
  'client_secret', 'clientSecret', 'code', 'state', 'password', 'secret'
]

// Explicit paths, no wildcards: pino's redactor runs on every line, and a wildcard path ('*.code')
// made a line cost about four times as much on the lookup's hot path (bench/RESULTS.md). The code
// logs ids and outcomes, never token-bearing objects; these paths catch a top-level slip.
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

export function loggerOptions (level: string, opts: { pretty?: boolean } = {}): FastifyServerOptions['logger'] {
  return {
    level,
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    serializers: {
      req: (req: { method: string, url: string, id: string }) => ({ method: req.method, url: pathOnly(req.url), id: req.id }),
      res: (res: { statusCode: number }) => ({ statusCode: res.statusCode })
    },
    ...(opts.pretty === true ? { transport: { target: 'pino-pretty', options: { colorize: true } } } : {})
  }
}
