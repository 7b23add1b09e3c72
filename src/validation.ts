// Request validation with one Ajv per part of the request, as Fastify's documentation shows for
// per-part coercion: query strings, path parameters and headers arrive as text and are coerced to
// their schema's types (`?limit=20` is an integer); JSON bodies are taken as sent (a number is not
// a merchant id). Unknown body fields are rejected, never silently dropped.
import { Ajv, type Options } from 'ajv'
import type { FastifySchemaCompiler } from 'fastify'

const common: Options = { removeAdditional: false, useDefaults: true, allErrors: false }
const textParts = new Ajv({ ...common, coerceTypes: true })
const body = new Ajv({ ...common, coerceTypes: false })

export const validatorCompiler: FastifySchemaCompiler<object> = ({ schema, httpPart }) =>
  (httpPart === 'body' ? body : textParts).compile(schema)
