// A lookup answers within CYBS_TIMEOUT_MS + 2 s whatever CyberSource does; a refresh that takes
// longer goes on in the background, and its result is stored and served afterwards.
import t from 'tap'
import { build, onboard, until } from '../helper.js'

/** Past the background refresh point and below 60 s of validity: a lookup must refresh first. */
const NEARLY_EXPIRED_MS = 870_000
const TIMEOUT_MS = 2000

t.test('CyberSource slower than the lookup budget: 503 in time, the refresh still lands', async t => {
  let offset = 0
  const now = (): number => Date.now() + offset
  const b = await build(t, { now, simulatorOptions: { now }, env: { CYBS_TIMEOUT_MS: String(TIMEOUT_MS) } })
  t.equal((await onboard(b, 'm_slow')).statusCode, 200)
  const lookup = async (): Promise<{ statusCode: number, token?: string, code?: string }> => {
    const res = await b.app.inject({ url: '/internal/v1/merchants/m_slow/access-token', headers: b.auth })
    const body = JSON.parse(res.body) as { access_token?: string, error?: { code: string } }
    return { statusCode: res.statusCode, token: body.access_token, code: body.error?.code }
  }
  const first = await lookup()
  t.equal(first.statusCode, 200)

  // Every refresh attempt outlives its timeout until the behaviour is reset below.
  const refreshes = (): number => b.sim.control.requests().filter(r => r.form.grant_type === 'refresh_token').length
  b.sim.control.setBehavior({ delayMs: TIMEOUT_MS + 1500, grantType: 'refresh_token' })
  offset += NEARLY_EXPIRED_MS
  const started = Date.now()
  const late = await lookup()
  const took = Date.now() - started
  t.equal(late.statusCode, 503, 'no valid token and no answer from CyberSource: 503')
  t.equal(late.code, 'upstream_unavailable')
  t.ok(took <= TIMEOUT_MS + 2000 + 750, `answered within CYBS_TIMEOUT_MS + 2 s (${took} ms)`)
  t.ok(took >= TIMEOUT_MS, 'after waiting for CyberSource')

  // The refresh goes on (its next attempt): once CyberSource answers, the tokens are stored.
  const attemptsSoFar = refreshes()
  t.ok(attemptsSoFar >= 1, 'the refresh reached CyberSource')
  b.sim.control.setBehavior({})
  t.ok(await until(async () => (await b.app.inject({ url: '/internal/v1/merchants/m_slow', headers: b.auth })).json().last_refreshed_at !== null, 15_000),
    'the background refresh stored its result')
  const after = await lookup()
  t.equal(after.statusCode, 200)
  t.not(after.token, first.token, 'a new token is served')
  t.ok(refreshes() > attemptsSoFar, 'by a later attempt of the same refresh')
})
