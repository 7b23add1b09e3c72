// The onboarding as a merchant's browser lives it: Debian's Chromium, driven by playwright-core,
// walks /oauth/connect → the simulator's consent page → Allow or Deny → our callback page,
// against the app listening on a real port (the simulator redirects the browser back to it).
import t, { type Test } from 'tap'
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Redis } from 'ioredis'
import { chromium, type Page } from 'playwright-core'
import { build, type Built } from '../helper.js'
import { freePort } from '../../src/net-utils.js'

const CHROMIUM = '/usr/bin/chromium'
const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'
]
const SCREENSHOTS = join(fileURLToPath(new URL('../..', import.meta.url)), '.tap', 'screenshots')
const skip = existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium) to run the browser walk`

/** The app on a real loopback port, PUBLIC_BASE_URL pointing at it, the simulator accepting only its callback. */
async function listening (t: Test): Promise<{ b: Built, base: string }> {
  const port = await freePort()
  const base = `http://127.0.0.1:${port}`
  const b = await build(t, {
    env: { PUBLIC_BASE_URL: base, PORT: String(port) },
    simulatorOptions: { redirectUrl: `${base}/oauth/callback` }
  })
  await b.app.listen({ host: '127.0.0.1', port })
  return { b, base }
}

/** A fresh Chromium profile and page; console errors are collected for the test to check. */
async function browserPage (t: Test): Promise<{ page: Page, consoleErrors: string[] }> {
  const profile = mkdtempSync(join(tmpdir(), 'cybs-chromium-'))
  const context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: ARGS })
  t.teardown(async () => {
    await context.close()
    rmSync(profile, { recursive: true, force: true })
  })
  const page = context.pages()[0] ?? await context.newPage()
  page.setDefaultTimeout(15_000)
  const consoleErrors: string[] = []
  page.on('console', msg => {
    // Chromium asks every origin for /favicon.ico; neither the service nor the simulator has one.
    if (msg.type() === 'error' && !msg.location().url.endsWith('/favicon.ico')) consoleErrors.push(`${msg.text()} (${msg.location().url})`)
  })
  page.on('pageerror', err => consoleErrors.push(err.message))
  return { page, consoleErrors }
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

t.test('Allow: the merchant lands on "Account connected" and the internal API hands out a token', { skip }, async t => {
  const { b, base } = await listening(t)
  const { page, consoleErrors } = await browserPage(t)
  await openConsent(t, page, b, base)

  await page.getByLabel('Merchant ID').fill('browser_merchant')
  await screenshot(t, page, 'simulator-consent.png')
  const [callback] = await Promise.all([
    page.waitForResponse(r => r.url().startsWith(`${base}/oauth/callback?`)),
    page.getByRole('button', { name: 'Allow' }).click()
  ])
  await page.waitForLoadState()
  t.equal(callback.status(), 200, 'the callback answers with the success page')
  t.equal(new URL(page.url()).origin, base, 'back on the service')
  t.equal(await page.locator('h1').textContent(), 'Account connected')
  t.match(await page.locator('main').textContent(), /merchant account browser_merchant is now connected/)
  await screenshot(t, page, 'account-connected.png')
  t.same(consoleErrors, [], 'no console errors (CSP included)')

  t.equal(b.sim.control.stats().exchanges, 1, 'the code was exchanged once')
  const res = await fetch(`${base}/internal/v1/merchants/browser_merchant/access-token`, { headers: b.auth })
  t.equal(res.status, 200)
  const body = await res.json() as Record<string, unknown>
  t.match(body, { merchant_id: 'browser_merchant', token_type: 'Bearer', access_token: /^[\w-]+\.[\w-]+\.[\w-]+$/ })
  const payload = JSON.parse(Buffer.from(String(body.access_token).split('.')[1], 'base64url').toString()) as Record<string, unknown>
  t.equal(payload.merchant_id, 'browser_merchant', 'the token is the one CyberSource issued for that merchant')
  t.same(await merchantKeys(b), [`${b.config.redisKeyPrefix}merchant:{browser_merchant}`])
})

t.test('Deny: the merchant lands on "Connection cancelled" and nothing is stored', { skip }, async t => {
  const { b, base } = await listening(t)
  const { page, consoleErrors } = await browserPage(t)
  await openConsent(t, page, b, base)

  await page.getByLabel('Merchant ID').fill('browser_merchant')
  const [callback] = await Promise.all([
    page.waitForResponse(r => r.url().startsWith(`${base}/oauth/callback`)),
    page.getByRole('button', { name: 'Deny' }).click()
  ])
  await page.waitForLoadState()
  t.equal(callback.status(), 200)
  t.equal(page.url(), `${base}/oauth/callback`, 'CyberSource sends no parameters on deny')
  t.equal(await page.locator('h1').textContent(), 'Connection cancelled')
  await screenshot(t, page, 'connection-cancelled.png')
  t.same(consoleErrors, [], 'no console errors (CSP included)')

  t.equal(b.sim.control.requests().length, 0, 'no token request was made')
  t.same(await merchantKeys(b), [], 'no merchant record')
  const res = await fetch(`${base}/internal/v1/merchants/browser_merchant/access-token`, { headers: b.auth })
  t.equal(res.status, 404)
  t.match(await res.json(), { error: { code: 'merchant_not_found' } })
})
