// TypeBox schemas of the internal API: requests, responses and errors. Every status code has a
// response schema, so nothing a schema does not name (a refresh token) can reach a response.
import { Type, type Static } from '@sinclair/typebox'
import { ID_PATTERN } from './config.js'
import { EVENT_TYPES } from './event-log.js'

export const MerchantIdSchema = Type.String({ pattern: ID_PATTERN.source, description: 'CyberSource merchant id' })
export const MerchantParamsSchema = Type.Object({ merchantId: MerchantIdSchema })

export const ErrorSchema = Type.Object({
  error: Type.Object({
    code: Type.String(),
    message: Type.String(),
    correlation_id: Type.String()
  })
}, { $id: 'Error' })

export const AccessTokenSchema = Type.Object({
  merchant_id: Type.String(),
  access_token: Type.String(),
  token_type: Type.Literal('Bearer'),
  expires_at: Type.String({ format: 'date-time' }),
  expires_in: Type.Integer({ description: 'seconds' }),
  scope: Type.String()
})

export type AccessTokenAnswer = Static<typeof AccessTokenSchema>

export const MerchantStatusSchema = Type.Object({
  merchant_id: Type.String(),
  status: Type.Union([Type.Literal('connected'), Type.Literal('reauthorization_required')]),
  scope: Type.String(),
  client_status: Type.String(),
  connected_at: Type.String({ format: 'date-time' }),
  access_token_expires_at: Type.String({ format: 'date-time' }),
  refresh_token_expires_at: Type.String({ format: 'date-time' }),
  last_refreshed_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()])
})
export type MerchantStatus = Static<typeof MerchantStatusSchema>

export const ListQuerySchema = Type.Object({
  // An integer, coerced from the query's text; the text is held to digits first, because Ajv
  // coerces 'Infinity' (and '1e400') to a number and checks ranges of finite numbers only.
  limit: Type.Unsafe<number>({
    allOf: [{ type: 'string', pattern: '^[0-9]{1,3}$' }, { type: 'integer', minimum: 1, maximum: 500 }],
    default: 100,
    description: '1-500'
  }),
  cursor: Type.Optional(Type.String({ maxLength: 128 }))
})

/**
 * A browser route's query parameter: one value (a repeated one arrives as an array and fails)
 * of at most 2,048 characters. Unknown parameters are held to the same rule.
 */
const QueryParam = Type.String({ maxLength: 2048 })

export const ConnectQuerySchema = Type.Object({
  merchant_id: Type.Optional(MerchantIdSchema)
}, { additionalProperties: QueryParam })

export const CallbackQuerySchema = Type.Object({
  code: Type.Optional(QueryParam),
  state: Type.Optional(QueryParam)
}, { additionalProperties: QueryParam })

export const MerchantListSchema = Type.Object({
  items: Type.Array(MerchantStatusSchema),
  next_cursor: Type.Union([Type.String(), Type.Null()])
})

export const OnboardingLinkBodySchema = Type.Object({
  merchant_id: Type.Optional(MerchantIdSchema),
  reference: Type.Optional(Type.String({ minLength: 1, maxLength: 256, pattern: '^\\P{C}+$', description: 'the portal\'s own opaque string, e.g. its account id' }))
}, { additionalProperties: false })

const Nullable = <T extends ReturnType<typeof Type.String>>(t: T) => Type.Union([t, Type.Null()])

export const OnboardingLinkSchema = Type.Object({
  id: Type.String(),
  url: Type.String(),
  expires_at: Type.String({ format: 'date-time' }),
  merchant_id: Nullable(Type.String()),
  reference: Nullable(Type.String())
})

export const OnboardingLinkStatusSchema = Type.Object({
  id: Type.String(),
  status: Type.Union(['pending', 'connected', 'failed', 'expired'].map(s => Type.Literal(s))),
  merchant_id: Nullable(Type.String()),
  reference: Nullable(Type.String()),
  failure_reason: Nullable(Type.String()),
  created_at: Type.String({ format: 'date-time' }),
  expires_at: Type.String({ format: 'date-time' }),
  completed_at: Nullable(Type.String({ format: 'date-time' }))
})

/** An onboarding link's id as a path parameter: any id of this shape that is not stored is a 404. */
export const LinkIdParamsSchema = Type.Object({ id: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }) })

export const LinkVisitParamsSchema = Type.Object({
  id: Type.String({ maxLength: 64 }),
  key: Type.String({ maxLength: 64 })
})

/** Error responses by status code, for route schemas. */
export const errors = (...codes: number[]): Record<number, typeof ErrorSchema> =>
  Object.fromEntries(codes.map(c => [c, ErrorSchema]))

// Lifecycle events (GET /internal/v1/events).

export const EventSchema = Type.Object({
  id: Type.String({ description: 'stable; also the webhook-id of its delivery' }),
  type: Type.Union(EVENT_TYPES.map(t => Type.Literal(t))),
  occurred_at: Type.String({ format: 'date-time' }),
  merchant_id: Nullable(Type.String()),
  data: Type.Record(Type.String(), Type.Union([Type.String(), Type.Number(), Type.Boolean(), Type.Null()]))
})

export const EventListQuerySchema = Type.Object({
  limit: ListQuerySchema.properties.limit,
  after: Type.Optional(Type.String({ maxLength: 128, description: 'an event id: the list starts after it' }))
})

export const EventListSchema = Type.Object({
  items: Type.Array(EventSchema),
  next_after: Nullable(Type.String())
})
