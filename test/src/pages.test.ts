// The browser-facing pages as strings: escaping, the support reference, self-contained markup,
// the optional branding, the colour contrast of both palettes, and a page for every reason.
import t from 'tap'
import type { FastifyReply } from 'fastify'
import {
  FAILURES, PALETTES, REFERENCE_PATTERN, alreadyConnectedPage, errorPage, escapeHtml, failurePage,
  pageHeaders, renderPage, shortReference, successPage, type Branding, type PageReason
} from '../../src/pages.js'

const REASONS = Object.keys(FAILURES) as PageReason[]
const ACME: Branding = { partnerName: 'Acme Payments', portalUrl: 'https://portal.acme.example/merchants?tab=cybs' }
const HOSTILE: Branding = { partnerName: '<script>alert(1)</script> & "Co" \'x\'', portalUrl: 'https://p.example/?a="><script>x</script>&b=\'' }

/** Every page the service can render, under a branding. */
const allPages = (b: Branding): Array<[string, string]> => [
  ...REASONS.map(r => [r, failurePage(r, 'K7QF-3MZD', b)] as [string, string]),
  ['success', successPage('m_1', 'K7QF-3MZD', b)],
  ['already connected', alreadyConnectedPage('m_1', 'K7QF-3MZD', b)],
  ['error', errorPage('K7QF-3MZD', b)]
]

t.test('the status of every reason, as the specification lists them, and unique titles', async t => {
  t.same(Object.fromEntries(REASONS.map(r => [r, FAILURES[r].status])), {
    access_denied: 200,
    invalid_state: 401,
    exchange_failed: 502,
    upstream_unavailable: 503,
    merchant_mismatch: 403,
    storage_unavailable: 503,
    browser_mismatch: 403,
    invalid_request: 400,
    rate_limited: 429,
    link_not_found: 404,
    link_expired: 410
  })
  const titles = [...REASONS.map(r => FAILURES[r].title), 'Account connected', 'Account already connected', 'Something went wrong']
  t.equal(new Set(titles).size, titles.length, 'no two pages share a title')
  t.match(FAILURES.browser_mismatch.text, /open the link again in the browser you started from/)
})

t.test('every reason has its page: title, heading, text and reference', async t => {
  for (const r of REASONS) {
    const html = failurePage(r, 'K7QF-3MZD', {})
    t.match(html, `<title>${escapeHtml(FAILURES[r].title)}</title>`, `${r}: title`)
    t.match(html, `<h1>${escapeHtml(FAILURES[r].title)}</h1>`, `${r}: heading`)
    t.match(html, `<p>${escapeHtml(FAILURES[r].text)}</p>`, `${r}: text`)
    t.match(html, 'Reference: <strong>K7QF-3MZD</strong>', `${r}: reference`)
    t.match(html, /quote this reference/, `${r}: what to do with it`)
  }
})

t.test('the success, already-connected and error pages', async t => {
  t.match(successPage('m_1', 'AAAA-BBBB', {}), /<h1>Account connected<\/h1>[\s\S]*merchant account m_1 is now connected\.[\s\S]*return to the partner portal\./)
  t.match(successPage('m_1', 'AAAA-BBBB', ACME), /merchant account m_1 is now connected to Acme Payments\./)
  t.match(alreadyConnectedPage('m_1', 'AAAA-BBBB', {}), /<h1>Account already connected<\/h1>[\s\S]*merchant account m_1 is connected/)
  t.match(errorPage('AAAA-BBBB', {}), /<h1>Something went wrong<\/h1>[\s\S]*Reference: <strong>AAAA-BBBB<\/strong>/)
  t.notMatch(renderPage('T', ['p'], undefined, {}), /Reference/, 'no reference line without a reference')
})

t.test('dynamic values are escaped: partner name, merchant id, portal URL, reference', async t => {
  const mid = '"><img src=x onerror=alert(1)>'
  const pages = [...allPages(HOSTILE), ['hostile merchant', successPage(mid, '<b>ref</b>', HOSTILE)], ['hostile merchant again', alreadyConnectedPage(mid, '<b>ref</b>', HOSTILE)]]
  for (const [what, html] of pages) {
    t.notMatch(html, '<script>', `${what}: no raw script tag`)
    t.notMatch(html, '<img', `${what}: no raw img tag`)
    t.notMatch(html, '<b>ref', `${what}: no raw markup from the reference`)
    t.match(html, '&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;Co&quot; &#39;x&#39;', `${what}: the partner name, escaped`)
    t.match(html, `href="${escapeHtml(HOSTILE.portalUrl ?? '')}"`, `${what}: the portal URL, escaped in its attribute`)
  }
  t.match(successPage(mid, 'AAAA-BBBB', {}), escapeHtml(mid))
  t.equal(escapeHtml('&<>"\''), '&amp;&lt;&gt;&quot;&#39;')
})

t.test('references: two groups of four from the unambiguous alphabet, crypto random', async t => {
  const refs = Array.from({ length: 2000 }, shortReference)
  t.ok(refs.every(r => REFERENCE_PATTERN.test(r)), 'every reference matches REFERENCE_PATTERN')
  t.ok(refs.every(r => /^[0-9A-Z]{4}-[0-9A-Z]{4}$/.test(r) && !/[ILOU]/.test(r)), 'no I, L, O or U')
  t.equal(new Set(refs).size, refs.length, 'no repeats in 2,000')
  for (let pos = 0; pos < 9; pos++) {
    if (pos === 4) continue
    t.equal(new Set(refs.map(r => r[pos])).size, 32, `all 32 symbols appear at position ${pos}`)
  }
  for (const bad of ['K7QF3MZD', 'k7qf-3mzd', 'K7QF-3MZI', 'K7QL-3MZD', 'O7QF-3MZD', 'K7QF-3MZU', 'K7QF-3MZD ', 'K7QF-3MZDX', ' K7QF-3MZD']) {
    t.notOk(REFERENCE_PATTERN.test(bad), `rejects ${JSON.stringify(bad)}`)
  }
})

t.test('no script, no form, nothing loaded from elsewhere', async t => {
  for (const b of [{}, ACME]) {
    for (const [what, html] of allPages(b)) {
      t.notMatch(html, /<script|<form|<iframe|<object|<embed|<img|@import|url\(/i, `${what}: no script, form, embedded or imported resource`)
      t.notMatch(html, /\son[a-z]+\s*=/i, `${what}: no event handler attribute`)
      const urls = [...html.matchAll(/\s(?:src|href|action)="([^"]*)"/g)].map(m => m[1])
      const elsewhere = urls.filter(u => !u.startsWith('data:') && u !== escapeHtml(ACME.portalUrl ?? ''))
      t.same(elsewhere, [], `${what}: only data: URIs and the configured portal link`)
      t.notMatch(html.replace(escapeHtml(ACME.portalUrl ?? ''), ''), /https?:\/\//, `${what}: no other absolute URL`)
      t.match(html, /<link rel="icon" href="data:image\/svg\+xml,/, `${what}: an inline favicon`)
      t.match(html, '@media (prefers-color-scheme: dark)', `${what}: a dark palette`)
    }
  }
})

t.test('the portal link and the partner name appear only when configured', async t => {
  for (const [what, html] of allPages({})) {
    t.notMatch(html, /<a\s/, `${what}: no link without a portal URL`)
    t.notMatch(html, /undefined|class="brand"/, `${what}: nothing left unset`)
  }
  for (const [what, html] of allPages({ portalUrl: 'https://p.example/' })) {
    t.match(html, '<a href="https://p.example/">Return to the partner portal</a>', `${what}: link named generically`)
  }
  for (const [what, html] of allPages(ACME)) {
    t.match(html, `<a href="${escapeHtml(ACME.portalUrl ?? '')}">Return to Acme Payments</a>`, `${what}: link named after the partner`)
    t.match(html, '<p class="brand">Acme Payments</p>', `${what}: the partner's name on top`)
    t.notMatch(html, 'the partner portal', `${what}: the texts name the partner`)
  }
  t.match(failurePage('invalid_state', 'AAAA-BBBB', { partnerName: 'Acme' }), 'start again from the Acme portal')
  t.notMatch(failurePage('invalid_state', 'AAAA-BBBB', { partnerName: 'Acme' }), /<a\s/, 'a name alone gives no link')
})

/** WCAG 2 contrast ratio of two #rrggbb colours. */
function contrast (a: string, b: string): number {
  const lum = (hex: string): number => {
    const [r, g, bl] = [1, 3, 5].map(i => parseInt(hex.slice(i, i + 2), 16) / 255)
      .map(c => c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4)
    return 0.2126 * r + 0.7152 * g + 0.0722 * bl
  }
  const [hi, lo] = [lum(a), lum(b)].sort((x, y) => y - x)
  return (hi + 0.05) / (lo + 0.05)
}

t.test('WCAG AA contrast in both palettes', async t => {
  t.equal(contrast('#000000', '#ffffff').toFixed(1), '21.0', 'the formula')
  for (const [mode, p] of Object.entries(PALETTES)) {
    for (const fg of [p.text, p.muted, p.link] as string[]) {
      for (const bg of [p.card, p.bg] as string[]) t.ok(contrast(fg, bg) >= 4.5, `${mode}: ${fg} on ${bg} is ${contrast(fg, bg).toFixed(2)}:1`)
    }
    t.ok(contrast(p.link, p.card) >= 3, `${mode}: the focus ring (${p.link}) against the card`)
  }
  const html = renderPage('T', ['p'], 'AAAA-BBBB', ACME)
  t.match(html, /a:focus-visible \{ outline: 3px solid var\(--link\)/, 'a visible focus ring on the link')
})

t.test('pageHeaders: no caching, no Referer', async t => {
  const headers: Record<string, string> = {}
  const reply = { header (k: string, v: string) { headers[k] = v; return reply } }
  t.equal(pageHeaders(reply as unknown as FastifyReply), reply)
  t.same(headers, { 'cache-control': 'no-store', 'referrer-policy': 'no-referrer' })
})
