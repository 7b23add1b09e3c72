// Typed failures of the token client. Messages carry the class, status and OAuth error name
// only: never a secret, code or token, so they are safe to log and to wrap.
export type CybsErrorKind = 'rejected' | 'unavailable' | 'protocol'

export class CybsError extends Error {
  constructor (
    readonly kind: CybsErrorKind,
    message: string,
    readonly correlationId: string,
    readonly status?: number,
    /** The OAuth `error` value (e.g. `invalid_grant`) for a rejection. */
    readonly oauthError?: string
  ) {
    super(message)
    this.name = 'CybsError'
  }
}

export const isCybsError = (err: unknown, kind?: CybsErrorKind): err is CybsError =>
  err instanceof CybsError && (kind === undefined || err.kind === kind)
