// The lifecycle events the service itself emits, read through GET /internal/v1/events: every
// transition of a merchant once, in order, with the onboarding link's id and reference where
// there is one, and never a secret. A private Redis and the simulator over real HTTP.
import t from 'tap'
import { CLIENT_ID, build, callback, cookiesOf, onboard, recordIssuedTokens, secrets, until, type Built } from '../helper.js'
import { buildSimulator } from '../../src/simulator/app.js'

interface Event { id: string, type: string, occurred_at: string, merchant_id: string | null, data: Record<string, unknown> }

async function allEvents (b: Built): Promise<Event[]> {
  const out: Event[] = []
  let after: string | null = null
  for (;;) {
    const res = await b.app.inject({ url: `/internal/v1/events?limit=2${after === null ? '' : `&after=${after}`}`, headers: b.auth })
    const page = res.json() as { items: Event[], next_after: string | null }
    out.push(...page.items)
    if (page.items.length === 0) return out
    after = page.next_after
  }
}

/** Waits until `n` events are readable (emits are appended in the background). */
async function eventsUntil (b: Built, n: number): Promise<Event[]> {
  let events: Event[] = []
  await until(async () => (events = await allEvents(b)).length >= n, 5000)
  return events
}

t.test('each transition emits one event, in order, without secrets; paging with after', async t => {
  const s = secrets()
  const sim = buildSimulator({ clientId: CLIENT_ID, clientSecret: s.clientSecret })
  const issued = recordIssuedTokens(sim)
  await sim.app.listen({ host: '127.0.0.1', port: 0 })
  t.teardown(async () => await sim.app.close())
  const url = `http://127.0.0.1:${(sim.app.server.address() as { port: number }).port}`
  const b = await build(t, { secrets: s, simulator: { ...sim, url }, env: { ONBOARDING_FAILURE_URL: 'https://portal.example/failed' } })
  const auth = b.auth

  t.equal((await onboard(b, 'life_m')).statusCode, 200)
  t.equal((await onboard(b, 'life_m')).statusCode, 200)
  t.equal((await b.app.inject({ method: 'POST', url: '/internal/v1/merchants/life_m/refresh', headers: auth })).statusCode, 200)
  b.sim.control.setBehavior({ fault: 'error_502_html', grantType: 'refresh_token' })
  t.equal((await b.app.inject({ method: 'POST', url: '/internal/v1/merchants/life_m/refresh', headers: auth })).statusCode, 503)
  await new Promise(resolve => setTimeout(resolve, 2100)) // past the hold after a failed refresh
  t.equal((await b.app.inject({ method: 'POST', url: '/internal/v1/merchants/life_m/refresh', headers: auth })).statusCode, 503, 'it fails again: the same episode, no second event')
  b.sim.control.setBehavior({})
  b.sim.control.revokeRefreshTokens('life_m')
  await new Promise(resolve => setTimeout(resolve, 2100)) // past the hold after a failed refresh
  t.equal((await b.app.inject({ method: 'POST', url: '/internal/v1/merchants/life_m/refresh', headers: auth })).statusCode, 409)
  t.equal((await b.app.inject({ method: 'DELETE', url: '/internal/v1/merchants/life_m', headers: auth })).statusCode, 204)

  // A failed onboarding through a link: its id and reference travel with the event.
  const link = (await b.app.inject({ method: 'POST', url: '/internal/v1/onboarding-links', headers: auth, payload: { merchant_id: 'bound_m', reference: 'acct-9' } })).json() as { id: string, url: string }
  const visit = await b.app.inject({ url: new URL(link.url).pathname })
  const state = new URL(String(visit.headers.location)).searchParams.get('state') ?? ''
  await callback(b, { code: b.sim.control.issueCode('other_m'), state }, cookiesOf(visit.headers))

  const events = await eventsUntil(b, 7)
  t.same(events.map(e => [e.type, e.merchant_id]), [
    ['merchant.connected', 'life_m'],
    ['merchant.reconnected', 'life_m'],
    ['merchant.refreshed', 'life_m'],
    ['merchant.refresh_failed', 'life_m'],
    ['merchant.reauthorization_required', 'life_m'],
    ['merchant.disconnected', 'life_m'],
    ['onboarding.failed', 'bound_m']
  ], 'one event per transition, in order')
  t.same(events[6].data, { onboarding_id: link.id, reference: 'acct-9', reason: 'merchant_mismatch' })
  t.equal(events[3].data.reason, 'unavailable')
  for (const e of events) t.match(e, { id: /^evt_/, occurred_at: /^\d{4}-\d\d-\d\dT/ })

  const text = JSON.stringify(events)
  const leaked = [...issued, b.secrets.clientSecret, b.secrets.apiSecret].filter(s => text.includes(s))
  t.same(leaked.map(s => s.slice(0, 10)), [], 'no token or secret in any event')

  const afterThird = (await b.app.inject({ url: `/internal/v1/events?after=${events[2].id}&limit=2`, headers: auth })).json() as { items: Event[], next_after: string }
  t.same(afterThird.items.map(e => e.id), [events[3].id, events[4].id], 'paging with after')
  t.equal(afterThird.next_after, events[4].id)
  const forged = await b.app.inject({ url: `/internal/v1/events?after=${events[2].id.slice(0, -2)}xx`, headers: auth })
  t.equal(forged.statusCode, 400, 'a forged after → 400')
  t.equal(forged.json().error.code, 'invalid_request')
})
