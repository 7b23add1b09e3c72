// /internal/v1/merchants: access-token lookup, status, list, forced refresh, delete.
import type { FastifyInstance, FastifyReply } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import type { AccessToken } from '../../../../src/token-service.js'
import type { MerchantMeta } from '../../../../src/token-store.js'
import { MerchantNotFoundError } from '../../../../src/errors.js'
import {
  AccessTokenSchema, ListQuerySchema, MerchantListSchema, MerchantParamsSchema, MerchantStatusSchema,
  errors, type AccessTokenAnswer, type MerchantStatus
} from '../../../../src/schemas.js'

const iso = (ms: number): string => new Date(ms).toISOString()

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

export default async function merchantRoutes (fastify: FastifyInstance): Promise<void> {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>()
  const tags = ['merchants']
  const security = [{ bearer: [] }]

  // The lookup's body changes only with the token and the second of expires_in: it is made once
  // per token and second and sent as it is. Entries go with their token objects, which the token
  // cache shares between lookups. JSON.stringify of an object typed by the route's response
  // schema (no other field can be added): its string is flat, so Node writes it with the headers
  // in one write, where the schema serializer's string, built piece by piece, or a Buffer beside
  // the header string, cost a measurable share of every lookup (bench/RESULTS.md).
  const bodies = new WeakMap<AccessToken, { expiresIn: number, body: string }>()
  const lookupBody = (token: AccessToken): string => {
    const expiresIn = Math.floor((token.expiresAt - app.now()) / 1000)
    let memo = bodies.get(token)
    if (memo === undefined || memo.expiresIn !== expiresIn) {
      const answer: AccessTokenAnswer = {
        merchant_id: token.merchantId,
        access_token: token.accessToken,
        token_type: token.tokenType,
        expires_at: iso(token.expiresAt),
        expires_in: expiresIn,
        scope: token.scope
      }
      const body = JSON.stringify(answer)
      memo = { expiresIn, body }
      bodies.set(token, memo)
    }
    return memo.body
  }

  app.get('/:merchantId/access-token', {
    config: { lookup: true },
    schema: {
      tags,
      security,
      summary: 'A fresh access token (valid for at least 60 more seconds)',
      params: MerchantParamsSchema,
      response: { 200: AccessTokenSchema, ...errors(400, 401, 404, 409, 503) }
    }
  }, async (request, reply) => {
    // A fresh cached token needs no Redis; otherwise the token service may read Redis or refresh.
    const id = request.params.merchantId
    const token = app.tokenService.peekAccessToken(id) ?? await app.tokenService.getAccessToken(id)
    // Fastify sends a string with a JSON type as it is (the typed reply only knows the object form).
    const raw: FastifyReply = reply
    return await raw.header('cache-control', 'no-store').type('application/json; charset=utf-8').send(lookupBody(token))
  })

  app.get('/:merchantId', {
    schema: {
      tags,
      security,
      summary: 'Connection status (no secrets)',
      params: MerchantParamsSchema,
      response: { 200: MerchantStatusSchema, ...errors(400, 401, 404, 503) }
    }
  }, async (request) => {
    const meta = await app.tokenStore.getStatus(request.params.merchantId)
    if (meta === undefined) throw new MerchantNotFoundError()
    return toStatus(meta)
  })

  app.get('/', {
    schema: {
      tags,
      security,
      summary: 'Connected merchants, paginated with an opaque cursor',
      querystring: ListQuerySchema,
      response: { 200: MerchantListSchema, ...errors(400, 401, 503) }
    }
  }, async (request) => {
    const page = await app.tokenStore.list(request.query.limit, request.query.cursor)
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
