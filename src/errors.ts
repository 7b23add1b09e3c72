// Domain errors with the stable codes of docs/api.md. The root error handler (plugins/errors.ts)
// maps them to { error: { code, message, correlation_id } }.
import createError from '@fastify/error'

/** The JSON error shape of every internal API answer. */
export function errorBody (code: string, message: string, correlationId: string): { error: { code: string, message: string, correlation_id: string } } {
  return { error: { code, message, correlation_id: correlationId } }
}

export const InvalidRequestError = createError('invalid_request', '%s', 400)
export const UriTooLongError = createError('invalid_request', 'The request URL is too long', 414)
export const UnauthorizedError = createError('unauthorized', 'A valid bearer credential is required', 401)
export const MerchantNotFoundError = createError('merchant_not_found', 'No tokens are stored for this merchant', 404)
export const OnboardingNotFoundError = createError('onboarding_not_found', 'No such onboarding link', 404)
export const ReauthorizationRequiredError = createError('reauthorization_required', 'The merchant must authorize the application again', 409)
export const RateLimitedError = createError('rate_limited', 'Too many requests', 429)
export const UpstreamUnavailableError = createError('upstream_unavailable', 'CyberSource is unavailable and no valid access token is left', 503)
export const StorageUnavailableError = createError('storage_unavailable', 'Token storage is unavailable', 503)
export const EncryptionKeyUnavailableError = createError('encryption_key_unavailable', 'The record is encrypted under a key this service does not hold', 500)
