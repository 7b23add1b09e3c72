// The onboarding as a merchant's browser lives it: Debian's Chromium, driven by playwright-core,
// walks /oauth/connect → the simulator's consent page → Allow or Deny → our callback page,
// against the app listening on a real port (the simulator redirects the browser back to it).
// Then the pages people see: a reload shows the same page, another browser is refused, and the
// success and failure pages pass axe-core's WCAG 2 A/AA rules in light and dark mode.
import t, { type Test } from 'tap'
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Redis } from 'ioredis'
import { chromium, type BrowserContext, type Page, type Response } from 'playwright-core'
import { build, type Built } from '../helper.js'
import { freePort } from '../../src/net-utils.js'
import { FAILURES, REFERENCE_PATTERN } from '../../src/pages.js'

const CHROMIUM = '/usr/bin/chromium'
const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'
]
const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const SCREENSHOTS = join(ROOT, '.tap', 'screenshots')
const AXE = join(ROOT, 'node_modules', 'axe-core', 'axe.min.js')
const WCAG_TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa']
const skip = existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium) to run the browser walk`

/** The app on a real loopback port, PUBLIC_BASE_URL pointing at it, the simulator accepting only its callback. */
async function listening (t: Test, env: Record<string, string> = {}): Promise<{ b: Built, base: string }> {
  const port = await freePort()
  const base = `http://127.0.0.1:${port}`
  const b = await build(t, {
    env: { PUBLIC_BASE_URL: base, PORT: String(port), ...env },
    simulatorOptions: { redirectUrl: `${base}/oauth/callback` }
  })
  await b.app.listen({ host: '127.0.0.1', port })
  return { b, base }
}

interface Browser { context: BrowserContext, page: Page, consoleErrors: string[] }

/**
 * A fresh Chromium profile (a browser of its own: its own cookies) and page; console errors are
 * collected for the test to check. bypassCSP only where axe is injected.
 */
async function browser (t: Test, opts: { bypassCSP?: boolean } = {}): Promise<Browser> {
  const profile = mkdtempSync(join(tmpdir(), 'cybs-chromium-'))
  const context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: ARGS, bypassCSP: opts.bypassCSP })
  t.teardown(async () => {
    await context.close()
    rmSync(profile, { recursive: true, force: true })
  })
  const page = context.pages()[0] ?? await context.newPage()
  page.setDefaultTimeout(15_000)
  const consoleErrors: string[] = []
  page.on('console', msg => {
    // Chromium asks every origin for /favicon.ico; the simulator has none (our pages inline theirs).
    if (msg.type() === 'error' && !msg.location().url.endsWith('/favicon.ico')) consoleErrors.push(`${msg.text()} (${msg.location().url})`)
  })
  page.on('pageerror', err => consoleErrors.push(err.message))
  return { context, page, consoleErrors }
}

async function screenshot (t: Test, page: Page, name: string): Promise<void> {
  mkdirSync(SCREENSHOTS, { recursive: true })
  const path = join(SCREENSHOTS, name)
  await page.screenshot({ path, fullPage: true })
  t.comment(`screenshot: ${path}`)
}

async function merchantKeys (b: Built): Promise<string[]> {
  const client = new Redis(b.redis.url)
  try {
    const keys: string[] = []
    let cursor = '0'
    do {
      const [next, batch] = await client.scan(cursor, 'MATCH', `${b.config.redisKeyPrefix}merchant:*`, 'COUNT', 100)
      keys.push(...batch)
      cursor = next
    } while (cursor !== '0')
    return keys
  } finally {
    client.disconnect()
  }
}

/** Opens /oauth/connect and checks the browser lands on the simulator's consent page. */
async function openConsent (t: Test, page: Page, b: Built, base: string): Promise<void> {
  const connect = await page.goto(`${base}/oauth/connect`)
  t.equal(connect?.status(), 200, 'the consent page loads')
  const at = new URL(page.url())
  t.equal(at.origin, b.sim.url, 'the browser was redirected to the simulator')
  t.equal(at.pathname, '/ebc2/oauth/authorize')
  t.equal(at.searchParams.get('redirect_url'), `${base}/oauth/callback`)
  t.match(await page.locator('h1').textContent(), /wants access to your account/)
}

/** Fills the consent form and presses Allow or Deny; the answer of our callback. */
async function consent (page: Page, base: string, merchantId: string, button: 'Allow' | 'Deny'): Promise<Response> {
  await page.getByLabel('Merchant ID').fill(merchantId)
  const [callback] = await Promise.all([
    page.waitForResponse(r => r.url().startsWith(`${base}/oauth/callback`)),
    page.getByRole('button', { name: button }).click()
  ])
  await page.waitForLoadState()
  return callback
}

/** What tells a page apart for a person: its title, heading and support reference. */
async function shown (page: Page): Promise<{ title: string, heading: string | null, reference: string | null }> {
  const ref = page.locator('.ref strong')
  return { title: await page.title(), heading: await page.locator('h1').textContent(), reference: await ref.count() === 1 ? await ref.textContent() : null }
}

/**
 * The page in light then dark mode: a screenshot of each, zero axe-core violations of the WCAG 2
 * A/AA rules (contrast included), a different palette, and a visible focus ring on the portal link.
 */
async function checkAccessible (t: Test, page: Page, name: string): Promise<void> {
  if (await page.evaluate('typeof axe') === 'undefined') await page.addScriptTag({ path: AXE })
  await page.keyboard.press('Tab')
  const focus = await page.evaluate(`(() => { const a = document.activeElement, s = getComputedStyle(a)
    return { tag: a.tagName, text: a.textContent, outline: s.outlineStyle, width: parseFloat(s.outlineWidth) } })()`) as Record<string, unknown>
  t.match(focus, { tag: 'A', text: /^Return to /, outline: 'solid' }, `${name}: Tab reaches the portal link and shows its focus`)
  t.ok(Number(focus.width) >= 2, `${name}: the focus ring is at least 2px wide`)
  const backgrounds: unknown[] = []
  for (const colorScheme of ['light', 'dark'] as const) {
    await page.emulateMedia({ colorScheme })
    backgrounds.push(await page.evaluate('getComputedStyle(document.body).backgroundColor'))
    await screenshot(t, page, `${name}-${colorScheme}.png`)
    const violations = await page.evaluate(`axe.run(document, { runOnly: { type: 'tag', values: ${JSON.stringify(WCAG_TAGS)} } })
      .then(r => r.violations.map(v => v.id + ': ' + v.help + ' at ' + v.nodes.map(n => n.target.join(' ')).join(', ')))`)
    t.same(violations, [], `${name}, ${colorScheme}: no WCAG 2 A/AA violation`)
  }
  t.not(backgrounds[0], backgrounds[1], `${name}: dark mode has its own palette`)
  await page.emulateMedia({ colorScheme: null })
}

t.test('Allow: "Account connected", the same page on reload, a refusal in another browser, and a token', { skip }, async t => {
  const { b, base } = await listening(t)
  const { context, page, consoleErrors } = await browser(t)
  await openConsent(t, page, b, base)
  t.ok((await context.cookies(`${base}/oauth/callback`)).some(c => c.httpOnly && c.sameSite === 'Lax'), 'connect bound the onboarding to this browser with an HttpOnly, SameSite=Lax cookie')

  await screenshot(t, page, 'simulator-consent.png')
  const callback = await consent(page, base, 'browser_merchant', 'Allow')
  t.equal(callback.status(), 200, 'the callback answers with the success page')
  t.equal(new URL(page.url()).origin, base, 'back on the service')
  const first = await shown(page)
  t.match(first, { title: 'Account connected', heading: 'Account connected', reference: REFERENCE_PATTERN })
  const text = await page.locator('main').textContent() ?? ''
  t.match(text, /merchant account browser_merchant is now connected/)
  t.match(text, `Reference: ${first.reference ?? '?'}`, 'the reference, readable')
  t.match(text, /quote this reference/, 'and what to do with it')
  await screenshot(t, page, 'account-connected.png')

  const callbackUrl = page.url()
  const reloaded = await page.reload()
  t.equal(reloaded?.status(), 200, 'the reload answers 200 again')
  t.equal(page.url(), callbackUrl)
  t.same(await shown(page), first, 'the reload shows the same page: same title, heading and reference')
  t.equal(b.sim.control.stats().exchanges, 1, 'the code was exchanged once, reload included')
  t.same(consoleErrors, [], 'no console errors (CSP included)')
  t.match(await page.locator('link[rel=icon]').getAttribute('href'), /^data:image\/svg\+xml,/, 'the favicon is inline: no request for it')

  const other = await browser(t)
  const elsewhere = await other.page.goto(callbackUrl)
  t.equal(elsewhere?.status(), 401, 'another browser with the used callback URL: 401, as for a used state')
  t.equal(await other.page.locator('h1').textContent(), FAILURES.invalid_state.title)
  t.equal(b.sim.control.stats().exchanges, 1, 'still one exchange')

  const res = await fetch(`${base}/internal/v1/merchants/browser_merchant/access-token`, { headers: b.auth })
  t.equal(res.status, 200)
  const body = await res.json() as Record<string, unknown>
  t.match(body, { merchant_id: 'browser_merchant', token_type: 'Bearer', access_token: /^[\w-]+\.[\w-]+\.[\w-]+$/ })
  const payload = JSON.parse(Buffer.from(String(body.access_token).split('.')[1], 'base64url').toString()) as Record<string, unknown>
  t.equal(payload.merchant_id, 'browser_merchant', 'the token is the one CyberSource issued for that merchant')
  const keys = await merchantKeys(b)
  t.ok(keys.includes(`${b.config.redisKeyPrefix}merchant:{browser_merchant}`), 'the merchant record is stored')
  t.same(keys.filter(k => !k.startsWith(`${b.config.redisKeyPrefix}merchant:{browser_merchant}`)), [], 'and no other merchant')
})

t.test('Browser binding: the callback in another browser is refused and spends nothing; the first browser then connects', { skip }, async t => {
  const { b, base } = await listening(t)
  const first = await browser(t)
  await openConsent(t, first.page, b, base)
  // The callback URL CyberSource sends the first browser to, kept from it: the consent form's
  // answer (a redirect) is read here, and a 204 leaves the browser on the consent page.
  let keep: (url: string) => void = () => {}
  const kept = new Promise<string>(resolve => { keep = resolve })
  await first.page.route(`${b.sim.url}/**`, async route => {
    if (route.request().method() !== 'POST') return await route.continue()
    const answer = await route.fetch({ maxRedirects: 0 })
    keep(answer.headers().location ?? '')
    await route.fulfill({ status: 204 })
  })
  await first.page.getByLabel('Merchant ID').fill('bound_merchant')
  await first.page.getByRole('button', { name: 'Allow' }).click()
  const callbackUrl = await kept
  t.match(callbackUrl, /[?&]code=[^&]+/, 'the first browser was sent back with a code')

  const other = await browser(t)
  const refused = await other.page.goto(callbackUrl)
  t.equal(refused?.status(), FAILURES.browser_mismatch.status, 'another browser: 403')
  t.equal(await other.page.locator('h1').textContent(), FAILURES.browser_mismatch.title)
  t.match(await other.page.locator('main').textContent(), /open the link again in the browser you started from/)
  t.equal(b.sim.control.stats().exchanges, 0, 'no exchange')

  const connected = await first.page.goto(callbackUrl)
  t.equal(connected?.status(), 200, 'the state was not spent: the first browser connects')
  t.equal(await first.page.locator('h1').textContent(), 'Account connected')
  t.equal(b.sim.control.stats().exchanges, 1)
  t.same(first.consoleErrors, [], 'no console errors')
})

t.test('Deny: the merchant lands on "Connection cancelled" and nothing is stored', { skip }, async t => {
  const { b, base } = await listening(t)
  const { page, consoleErrors } = await browser(t)
  await openConsent(t, page, b, base)

  const callback = await consent(page, base, 'browser_merchant', 'Deny')
  t.equal(callback.status(), 200)
  t.equal(page.url(), `${base}/oauth/callback`, 'CyberSource sends no parameters on deny')
  t.match(await shown(page), { title: FAILURES.access_denied.title, heading: FAILURES.access_denied.title, reference: REFERENCE_PATTERN })
  await screenshot(t, page, 'connection-cancelled.png')
  const reloaded = await page.reload()
  t.equal(reloaded?.status(), 200, 'a reload still says cancelled')
  t.equal(await page.locator('h1').textContent(), FAILURES.access_denied.title)
  t.same(consoleErrors, [], 'no console errors (CSP included)')

  t.equal(b.sim.control.requests().length, 0, 'no token request was made')
  t.same(await merchantKeys(b), [], 'no merchant record')
  const res = await fetch(`${base}/internal/v1/merchants/browser_merchant/access-token`, { headers: b.auth })
  t.equal(res.status, 404)
  t.match(await res.json(), { error: { code: 'merchant_not_found' } })
})

t.test('Accessibility: the success and a failure page, branded, in light and dark mode', { skip }, async t => {
  const { b, base } = await listening(t, { PARTNER_NAME: 'Acme Payments', PARTNER_PORTAL_URL: 'https://portal.acme.example/merchants' })
  const { page } = await browser(t, { bypassCSP: true })
  await openConsent(t, page, b, base)
  t.equal((await consent(page, base, 'a11y_merchant', 'Allow')).status(), 200)
  t.equal(await page.locator('.brand').textContent(), 'Acme Payments', 'the partner is named')
  t.equal(await page.getByRole('link', { name: 'Return to Acme Payments' }).getAttribute('href'), 'https://portal.acme.example/merchants')
  await checkAccessible(t, page, 'success')

  const failed = await page.goto(`${base}/oauth/callback?code=unknown&state=unknown`)
  t.equal(failed?.status(), FAILURES.invalid_state.status)
  t.equal(await page.locator('h1').textContent(), FAILURES.invalid_state.title)
  await checkAccessible(t, page, 'failure')
})
