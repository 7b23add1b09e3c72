// /internal/v1/merchants: access-token lookup, status, list, forced refresh, delete (SPEC §2).
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import type { AccessToken } from '../../../../src/token-service.js'
import type { MerchantMeta } from '../../../../src/token-store.js'
import {
  AccessTokenSchema, ListQuerySchema, MerchantListSchema, MerchantParamsSchema, MerchantStatusSchema,
  errors, type MerchantStatus
} from '../../../../src/schemas.js'

const iso = (ms: number): string => new Date(ms).toISOString()
/**
 * A flat copy of a string built by concatenation (as fast-json-stringify builds its output): sent
 * as it is, Node would take the slow path to count its UTF-8 bytes and flatten it on every send.
 */
const flat = (s: string): string => Buffer.from(s, 'utf8').toString('utf8')

export function toStatus (m: MerchantMeta): MerchantStatus {
  return {
    merchant_id: m.merchantId,
    status: m.status,
    scope: m.scope,
    client_status: m.clientStatus,
    connected_at: iso(m.connectedAt),
    access_token_expires_at: iso(m.accessTokenExpiresAt),
    refresh_token_expires_at: iso(m.refreshTokenExpiresAt),
    last_refreshed_at: m.lastRefreshedAt === null ? null : iso(m.lastRefreshedAt)
  }
}

export interface MerchantRoutesOptions {
  /** Counts and audits a successful GET lookup, which its route answers itself (routes/internal). */
  lookupServed: (request: FastifyRequest, merchantId: string) => void
}

const JSON_TYPE = 'application/json; charset=utf-8'

export default async function merchantRoutes (fastify: FastifyInstance, opts: MerchantRoutesOptions): Promise<void> {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>()
  const tags = ['merchants']
  const security = [{ bearer: [] }]

  // Lookup bodies, serialized (by the route's response schema) once per token and value of
  // expires_in, with their byte length: the hot path sends a ready string. Entries go with their
  // token objects.
  const bodies = new WeakMap<AccessToken, { expiresIn: number, body: string, length: string }>()
  const lookupBody = (reply: FastifyReply, token: AccessToken): { body: string, length: string } => {
    const expiresIn = Math.floor((token.expiresAt - app.now()) / 1000)
    let memo = bodies.get(token)
    if (memo === undefined || memo.expiresIn !== expiresIn) {
      // The route's serializer answers a string (the type also allows a custom one's buffers).
      const body = flat(reply.serialize({
        merchant_id: token.merchantId,
        access_token: token.accessToken,
        token_type: token.tokenType,
        expires_at: iso(token.expiresAt),
        expires_in: expiresIn,
        scope: token.scope
      }) as string)
      memo = { expiresIn, body, length: String(Buffer.byteLength(body)) }
      bodies.set(token, memo)
    }
    return memo
  }
  // A GET is answered here, in one writeHead and end on Node's response (reply.hijack()), past
  // Fastify's send (content-type parsing, onSend hooks, byte count): about 4 % of a lookup
  // (README, Performance). No onSend hook sees it, so lookupServed counts and audits it, and it
  // names its headers itself: the two that the app's onSend hook gives every answer sent through
  // Fastify (src/app.ts), then the lookup's own. test/routes/internal-merchants checks that they
  // are those of a HEAD, which goes through Fastify (which drops the body) and has its own audit
  // line.
  const sendToken = (request: FastifyRequest, reply: FastifyReply, token: AccessToken): FastifyReply => {
    const { body, length } = lookupBody(reply, token)
    if (request.method !== 'GET') return reply.header('cache-control', 'no-store').type(JSON_TYPE).send(body)
    opts.lookupServed(request, token.merchantId)
    // Names and values in one flat array: Node walks an object's keys with a property lookup each.
    reply.hijack().raw.writeHead(200, [
      'x-correlation-id', request.id,
      'x-content-type-options', 'nosniff',
      'cache-control', 'no-store',
      'content-type', JSON_TYPE,
      'content-length', length
    ]).end(body)
    return reply
  }

  app.get('/:merchantId/access-token', {
    schema: {
      tags,
      security,
      summary: 'A fresh access token (valid for at least 60 more seconds)',
      params: MerchantParamsSchema,
      response: { 200: AccessTokenSchema, ...errors(400, 401, 404, 409, 503) }
    }
  }, (request, reply) => {
    // A fresh cached token is answered synchronously; otherwise the token service may read
    // Redis or refresh (the promise resolves once the reply is sent).
    const id = request.params.merchantId
    const hot = app.tokenService.peekAccessToken(id)
    if (hot === undefined) return app.tokenService.getAccessToken(id).then(async (token) => { await sendToken(request, reply, token) })
    sendToken(request, reply, hot)
  })

  app.get('/:merchantId', {
    schema: {
      tags,
      security,
      summary: 'Connection status (no secrets)',
      params: MerchantParamsSchema,
      response: { 200: MerchantStatusSchema, ...errors(400, 401, 404, 503) }
    }
  }, async (request) => toStatus(await app.tokenService.getStatus(request.params.merchantId)))

  app.get('/', {
    schema: {
      tags,
      security,
      summary: 'Connected merchants, paginated with an opaque cursor',
      querystring: ListQuerySchema,
      response: { 200: MerchantListSchema, ...errors(400, 401, 503) }
    }
  }, async (request) => {
    const page = await app.tokenService.list(Number(request.query.limit), request.query.cursor)
    return { items: page.items.map(toStatus), next_cursor: page.nextCursor }
  })

  app.post('/:merchantId/refresh', {
    schema: {
      tags,
      security,
      summary: 'Force a refresh now',
      params: MerchantParamsSchema,
      response: { 200: MerchantStatusSchema, ...errors(400, 401, 404, 409, 503) }
    }
  }, async (request) => toStatus(await app.tokenService.forceRefresh(request.params.merchantId)))

  app.delete('/:merchantId', {
    schema: {
      tags,
      security,
      summary: 'Forget the merchant: every key of it is deleted',
      params: MerchantParamsSchema,
      response: { 204: { type: 'null' }, ...errors(400, 401, 404, 503) }
    }
  }, async (request, reply) => {
    await app.tokenService.delete(request.params.merchantId)
    return await reply.code(204).send()
  })
}
