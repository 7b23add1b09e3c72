// A lookup is bounded. In time: it answers within CYBS_TIMEOUT_MS + 2 s whatever CyberSource does;
// a refresh that takes longer goes on in the background, and its result is stored and served
// afterwards. In memory: a replica keeps at most TOKEN_CACHE_MAX_ENTRIES access tokens, whatever
// the number of merchants looked up, and says how many in /metrics.
import t from 'tap'
import { build, onboard, until, type Built } from '../helper.js'

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

/** cybs_token_cache_entries as scraped from /metrics. */
async function cacheGauge (b: Built): Promise<number | undefined> {
  const res = await b.app.inject({ url: '/metrics' })
  const m = /^cybs_token_cache_entries (\d+)$/m.exec(res.body)
  return m === null ? undefined : Number(m[1])
}

for (const max of [3, 0]) {
  t.test(`TOKEN_CACHE_MAX_ENTRIES=${max}: at most ${max} tokens kept; every lookup still answers with the stored token`, async t => {
    const b = await build(t, { env: { TOKEN_CACHE_MAX_ENTRIES: String(max) } })
    t.equal(await cacheGauge(b), 0, 'the gauge starts at 0')
    const mids = Array.from({ length: 8 }, (_, i) => `m_bound_${i}`)
    const tokens = new Map<string, string>()
    for (const m of mids) {
      t.equal((await onboard(b, m)).statusCode, 200)
      const res = await b.app.inject({ url: `/internal/v1/merchants/${m}/access-token`, headers: b.auth })
      t.equal(res.statusCode, 200)
      tokens.set(m, (res.json() as { access_token: string }).access_token)
      t.ok(b.app.tokenService.cacheSize() <= max, `${b.app.tokenService.cacheSize()} cached after ${tokens.size} merchants`)
    }
    t.equal(b.app.tokenService.cacheSize(), max)
    t.equal(await cacheGauge(b), max, 'cybs_token_cache_entries says so')
    // Twice over, in order: each lookup of the first round finds its merchant evicted (max < 8).
    for (let round = 0; round < 2; round++) {
      for (const m of mids) {
        const res = await b.app.inject({ url: `/internal/v1/merchants/${m}/access-token`, headers: b.auth })
        t.equal(res.statusCode, 200)
        t.equal((res.json() as { access_token: string }).access_token, tokens.get(m), `${m}: the same token, read again from Redis when evicted`)
      }
    }
    t.equal(b.app.tokenService.cacheSize(), max)
    t.equal(b.sim.control.stats().refreshes, 0, 'no refresh was needed')
  })
}
