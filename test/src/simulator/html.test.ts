// The simulator's consent page meets WCAG AA in both colour schemes: the palette's contrast is
// checked as numbers, then the rendered page in Chromium with axe-core and the keyboard.
import t, { type Test } from 'tap'
import { existsSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { chromium, type Browser, type Page } from 'playwright-core'
import { AUTHORIZE_PATH, buildSimulator } from '../../../src/simulator/app.js'
import { PALETTES, type Palette } from '../../../src/simulator/html.js'

const CHROMIUM = '/usr/bin/chromium'
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
const skip = existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing: install Debian's chromium package to check the rendered page`

/** WCAG 2 relative luminance of an sRGB colour given as [r, g, b] in 0-255. */
function luminance ([r, g, b]: number[]): number {
  const lin = (c: number): number => { const s = c / 255; return s <= 0.04045 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4 }
  return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)
}
const hex = (h: string): number[] => [1, 3, 5].map(i => parseInt(h.slice(i, i + 2), 16))
const rgb = (css: string): number[] => (css.match(/\d+(\.\d+)?/g) ?? []).slice(0, 3).map(Number)
function contrast (a: number[], b: number[]): number {
  const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x)
  return (hi + 0.05) / (lo + 0.05)
}

t.test('contrast of the palette', async t => {
  t.ok(contrast(hex('#9aa5b1'), hex('#ffffff')) < 3, 'the check catches the former input border')
  const text: Array<[keyof Palette, keyof Palette]> = [
    ['text', 'card'], ['text', 'page'], ['muted', 'card'], ['headerText', 'headerBg'], ['text', 'inputBg'],
    ['primaryText', 'primaryBg'], ['secondaryText', 'card']
  ]
  // Control boundaries (the primary colour is the buttons' border) and the focus ring.
  const nonText: Array<[keyof Palette, keyof Palette]> = [
    ['inputBorder', 'card'], ['inputBorder', 'inputBg'], ['primaryBg', 'card'], ['focus', 'card'], ['focus', 'page']
  ]
  for (const [scheme, p] of Object.entries(PALETTES) as Array<[string, Palette]>) {
    for (const [fg, bg] of text) {
      const c = contrast(hex(p[fg]), hex(p[bg]))
      t.ok(c >= 4.5, `${scheme}: ${fg} on ${bg} ${c.toFixed(2)}:1 ≥ 4.5:1`)
    }
    for (const [fg, bg] of nonText) {
      const c = contrast(hex(p[fg]), hex(p[bg]))
      t.ok(c >= 3, `${scheme}: ${fg} against ${bg} ${c.toFixed(2)}:1 ≥ 3:1`)
    }
  }
})

async function consentPage (t: Test): Promise<string> {
  const sim = buildSimulator({ clientId: 'cid', clientSecret: 'secret', redirectUrl: 'http://127.0.0.1:9/cb' })
  await sim.app.listen({ host: '127.0.0.1', port: 0 })
  t.teardown(async () => { await sim.app.close() })
  const { port } = sim.app.server.address() as { port: number }
  return `http://127.0.0.1:${port}${AUTHORIZE_PATH}?sub=oauth&client_id=cid&redirect_url=${encodeURIComponent('http://127.0.0.1:9/cb')}&state=s1`
}

interface AxeResult { violations: Array<{ id: string, nodes: Array<{ target: unknown, failureSummary?: string }> }> }

const WCAG_TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa']
// Evaluated as strings: the test files are compiled without the DOM library.
const style = (selector: string, property: string): string => `getComputedStyle(${selector})[${JSON.stringify(property)}]`
const axeSource = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8')

async function axe (page: Page): Promise<AxeResult> {
  await page.evaluate(axeSource) // evaluated by the debugger protocol: the page's CSP still forbids scripts
  return await page.evaluate(`axe.run(document, { runOnly: { type: 'tag', values: ${JSON.stringify(WCAG_TAGS)} } })`) as AxeResult
}

t.test('the rendered page in light and dark mode', { skip }, async t => {
  const url = await consentPage(t)
  const browser: Browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS })
  t.teardown(async () => { await browser.close() })

  for (const colorScheme of ['light', 'dark'] as const) {
    const context = await browser.newContext({ colorScheme })
    const page = await context.newPage()
    const requested: string[] = []
    page.on('request', r => { requested.push(r.url()) })
    const res = await page.goto(url)
    t.equal(res?.status(), 200, `${colorScheme}: the page loads`)
    t.same(requested.filter(u => !u.endsWith('/favicon.ico')), [url], `${colorScheme}: nothing but the page itself is fetched`)

    const p = PALETTES[colorScheme]
    const cardBg = await page.evaluate(style('document.querySelector("main")', 'backgroundColor')) as string
    t.same(rgb(cardBg), hex(p.card), `${colorScheme}: the ${colorScheme} palette is in use`)

    const result = await axe(page)
    t.same(result.violations.map(v => `${v.id}: ${JSON.stringify(v.nodes.map(n => n.target))}`), [], `${colorScheme}: no axe violations`)

    // Tab through every control: each shows a solid focus ring of at least 2px and 3:1 on the card.
    const seen: string[] = []
    for (let i = 0; i < 3; i++) {
      await page.keyboard.press('Tab')
      const focus = await page.evaluate(`(() => {
        const el = document.activeElement, s = getComputedStyle(el)
        return { what: el.tagName.toLowerCase() + '#' + (el.id || el.value), style: s.outlineStyle, width: parseFloat(s.outlineWidth), color: s.outlineColor }
      })()`) as { what: string, style: string, width: number, color: string }
      seen.push(focus.what)
      t.equal(focus.style, 'solid', `${colorScheme} ${focus.what}: outline`)
      t.ok(focus.width >= 2, `${colorScheme} ${focus.what}: outline ${focus.width}px`)
      const c = contrast(rgb(focus.color), hex(p.card))
      t.ok(c >= 3, `${colorScheme} ${focus.what}: focus ring ${c.toFixed(2)}:1 on the card`)
    }
    t.same(seen, ['input#merchant_id', 'button#allow', 'button#deny'], `${colorScheme}: every control is reached`)

    // The input's border at rest (focus is on a button now).
    const border = contrast(rgb(await page.evaluate(style('document.getElementById("merchant_id")', 'borderTopColor')) as string), hex(p.card))
    t.ok(border >= 3, `${colorScheme}: input border ${border.toFixed(2)}:1 on the card`)
    await context.close()
  }
})
