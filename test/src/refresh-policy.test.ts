// The refresh policy as pure functions: no app, no Redis.
import t from 'tap'
import { CybsError } from '../../src/cybersource/errors.js'
import {
  FAILURE_HOLD_MS, MIN_VALIDITY_MS, REFRESH_AT_FRACTION, REFRESH_JITTER_FRACTION,
  classifyRefreshError, effectiveStatus, isServable, refreshAt, unitHash
} from '../../src/refresh-policy.js'
import type { MerchantMeta } from '../../src/token-store.js'

const T0 = Date.UTC(2026, 0, 1)
const MIN = 60_000

function meta (over: Partial<MerchantMeta> = {}): MerchantMeta {
  return {
    merchantId: 'm_1',
    status: 'connected',
    scope: 'payments',
    clientStatus: 'active',
    connectedAt: T0,
    accessTokenExpiresAt: T0 + 15 * MIN,
    refreshTokenExpiresAt: T0 + 365 * 24 * 60 * MIN,
    lastRefreshedAt: null,
    version: 1,
    grant: 'g1',
    ...over
  }
}

t.test('unitHash: stable, in [0, 1), spread', async t => {
  t.equal(unitHash('m_1:1'), unitHash('m_1:1'))
  const values = Array.from({ length: 1000 }, (_, i) => unitHash(`m_${i}:1`))
  t.ok(values.every(v => v >= 0 && v < 1), 'in [0, 1)')
  const low = values.filter(v => v < 0.5).length
  t.ok(low > 400 && low < 600, `about half below 0.5 (${low} of 1000)`)
})

t.test('refreshAt: two thirds of the lifetime, jittered per merchant and version', async t => {
  const lifetime = 15 * MIN
  const lo = T0 + lifetime * (REFRESH_AT_FRACTION - REFRESH_JITTER_FRACTION)
  const hi = T0 + lifetime * (REFRESH_AT_FRACTION + REFRESH_JITTER_FRACTION)
  const times = new Set<number>()
  for (let i = 0; i < 200; i++) {
    const at = refreshAt(meta({ merchantId: `m_${i}` }))
    t.ok(at >= lo && at <= hi, `m_${i} within the jitter window`)
    times.add(at)
  }
  t.ok(times.size > 150, 'merchants are spread out')
  t.equal(refreshAt(meta()), refreshAt(meta()), 'every replica agrees')
  t.not(refreshAt(meta({ version: 1 })), refreshAt(meta({ version: 2 })), 'a new version moves the point')
})

t.test('refreshAt counts from the last refresh, and is never later than MIN_VALIDITY before expiry', async t => {
  const refreshedAt = T0 + 60 * MIN
  const at = refreshAt(meta({ lastRefreshedAt: refreshedAt, accessTokenExpiresAt: refreshedAt + 15 * MIN }))
  t.ok(at > refreshedAt + 7 * MIN && at < refreshedAt + 12 * MIN, 'from the last refresh')
  // A short-lived token: two thirds of 90 s is later than expiry minus 60 s.
  const short = meta({ accessTokenExpiresAt: T0 + 90_000 })
  t.equal(refreshAt(short), T0 + 90_000 - MIN_VALIDITY_MS)
  // Already expired at issue: due at once.
  t.ok(refreshAt(meta({ accessTokenExpiresAt: T0 })) <= T0)
})

t.test('isServable: at least MIN_VALIDITY left', async t => {
  const r = meta()
  t.ok(isServable(r, r.accessTokenExpiresAt - MIN_VALIDITY_MS), 'exactly 60 s left')
  t.notOk(isServable(r, r.accessTokenExpiresAt - MIN_VALIDITY_MS + 1), 'a millisecond less')
  t.notOk(isServable(r, r.accessTokenExpiresAt + 1), 'expired')
})

t.test('effectiveStatus: an expired refresh token needs a new onboarding', async t => {
  const r = meta()
  t.equal(effectiveStatus(r, r.refreshTokenExpiresAt - 1), r, 'unchanged (the same object) while valid')
  t.equal(effectiveStatus(r, r.refreshTokenExpiresAt).status, 'reauthorization_required')
  t.equal(r.status, 'connected', 'the record itself is not changed')
  const marked = meta({ status: 'reauthorization_required' })
  t.equal(effectiveStatus(marked, T0).status, 'reauthorization_required')
})

t.test('classifyRefreshError: only invalid_grant marks the merchant', async t => {
  const rejected = (oauthError: string): CybsError => new CybsError('rejected', 'rejected', 'cid', 400, oauthError)
  t.match(classifyRefreshError(rejected('invalid_grant')), { outcome: 'rejected', reauthorize: true, level: 'warn' })
  for (const e of ['invalid_client', 'unauthorized_client']) {
    const f = classifyRefreshError(rejected(e))
    t.match(f, { outcome: 'client_rejected', reauthorize: false, level: 'error' }, e)
    t.match(f.message, /CYBS_CLIENT_ID/, `${e}: names the partner credentials`)
  }
  for (const e of ['invalid_request', 'unsupported_grant_type', 'invalid_scope', 'a_new_error']) {
    const f = classifyRefreshError(rejected(e))
    t.match(f, { outcome: 'client_rejected', reauthorize: false, level: 'error' }, e)
    t.match(f.message, /not marked/, `${e}: the merchant is not marked`)
  }
  for (const e of ['server_error', 'temporarily_unavailable']) {
    t.match(classifyRefreshError(rejected(e)), { outcome: 'unavailable', reauthorize: false, level: 'warn' }, `${e} is transient`)
  }
  t.match(classifyRefreshError(new CybsError('unavailable', 'timeout', 'cid')), { outcome: 'unavailable', reauthorize: false })
  t.match(classifyRefreshError(new CybsError('protocol', 'garbage', 'cid', 200)), { outcome: 'protocol', reauthorize: false })
  t.ok(FAILURE_HOLD_MS > 0 && FAILURE_HOLD_MS <= 2000, 'a failure is held for at most 2 s (docs/api.md)')
})
