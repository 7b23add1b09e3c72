// Reads (does not verify) a JWT payload. CyberSource documents no JWKS, so the claims are
// trusted on receipt over the mutually authenticated channel.
export function decodeJwtPayload (token: string): Record<string, unknown> | undefined {
  const parts = token.split('.')
  if (parts.length !== 3 || parts[1] === '') return undefined
  try {
    const payload: unknown = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'))
    return typeof payload === 'object' && payload !== null && !Array.isArray(payload)
      ? payload as Record<string, unknown>
      : undefined
  } catch {
    return undefined
  }
}
