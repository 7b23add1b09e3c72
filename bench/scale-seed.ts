// Seeds the scale benchmark's merchants through the service's own token store: the app registered
// in this process on its Redis (as test/helper.ts builds it), its `tokenStore` decorator's put(),
// many writes in flight. Records are shaped like real ones: JWTs of a given size (by default a
// 1.5 KB access token and a 1 KB refresh token), the access token valid for hours (no lookup needs
// a refresh during the run).
import { randomBytes, randomUUID } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import fp from 'fastify-plugin'
import app, { createServer } from '../src/app.js'
import { loadConfig } from '../src/config.js'
import type { NewRecord } from '../src/token-store.js'

/** Characters (bytes: base64url) of each token. */
export interface TokenSizes { access: number, refresh: number }
export const merchantId = (i: number): string => `scale_merchant_${String(i).padStart(7, '0')}`

const HOUR = 3600_000
const SCOPES = ['payments_with_standalone_credit', 'transactions']
const b64json = (o: unknown): string => Buffer.from(JSON.stringify(o)).toString('base64url')

/** A JWT of exactly `size` characters: the simulator's claims, padded, and an RS256-sized signature. */
export function jwt (kind: 'access_token' | 'refresh_token', merchant: string, size: number, lifetimeS: number): string {
  const head = b64json({ kid: 'scale', alg: 'RS256' })
  const claims = { jti: randomUUID(), iat: Date.now(), client_id: 'bench-partner', merchant_id: merchant, scopes: SCOPES, expires_in: lifetimeS, token_type: kind, pad: '' }
  const bare = b64json(claims).length
  const signature = randomBytes(256).toString('base64url')
  // Each pad character adds 4/3 of a base64 character; the signature's last characters absorb the rest.
  claims.pad = 'x'.repeat(Math.max(0, Math.floor((size - head.length - signature.length - 2 - bare) * 3 / 4)))
  const token = `${head}.${b64json(claims)}.${signature}`
  return token.length >= size ? token.slice(0, size) : token + 'A'.repeat(size - token.length)
}

export function record (i: number, now: number, sizes: TokenSizes): NewRecord {
  const id = merchantId(i)
  return {
    merchantId: id,
    status: 'connected',
    scope: SCOPES.join(' '),
    clientStatus: 'active',
    connectedAt: now - 60_000,
    accessTokenExpiresAt: now + 12 * HOUR,
    refreshTokenExpiresAt: now + 365 * 24 * HOUR,
    lastRefreshedAt: null,
    accessToken: jwt('access_token', id, sizes.access, 12 * 3600),
    refreshToken: jwt('refresh_token', id, sizes.refresh, 365 * 24 * 3600)
  }
}

/** Writes merchants 0…n-1 through the app's token store; resolves with the seconds it took. */
export async function seed (env: Record<string, string>, n: number, concurrency: number, sizes: TokenSizes): Promise<number> {
  const config = loadConfig({ ...env, LOG_LEVEL: 'warn' })
  // Its warnings go to stderr: stdout is the report's.
  const server = createServer(config, { logStream: process.stderr })
  // fastify-plugin: the app's decorators (tokenStore) are reachable from here.
  await server.register(fp(app), { config })
  await server.ready()
  try {
    const now = Date.now()
    const started = performance.now()
    let next = 0
    const worker = async (): Promise<void> => {
      while (next < n) {
        const v = await server.tokenStore.put(record(next++, now, sizes))
        if (v === undefined) throw new Error('a put was refused')
      }
    }
    await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker))
    return (performance.now() - started) / 1000
  } finally {
    await server.close()
  }
}
