// The HTML pages the merchant's browser sees on the browser-facing routes (/oauth/*): one renderer,
// the failure page of every reason, the success pages, and the headers every such answer carries.
// No script, form or third-party resource (helmet's CSP applies); every dynamic value is escaped.
import { randomBytes } from 'node:crypto'
import type { FastifyReply } from 'fastify'

/** The partner's branding (config.pages); every page reads naturally without it. */
export interface Branding { partnerName?: string, portalUrl?: string }

export type PageReason = 'access_denied' | 'invalid_state' | 'exchange_failed' | 'upstream_unavailable'
  | 'merchant_mismatch' | 'storage_unavailable' | 'browser_mismatch' | 'invalid_request' | 'rate_limited'
  | 'link_not_found' | 'link_expired'

const ENTITIES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }
export const escapeHtml = (s: string): string => s.replace(/[&<>"']/g, c => ENTITIES[c])

// Titles are unique: tests and people tell the pages apart by them.
export const FAILURES: Record<PageReason, { status: number, title: string, text: string }> = {
  access_denied: { status: 200, title: 'Connection cancelled', text: 'You did not allow access, so nothing was connected. You can close this window, or start again from the partner portal.' },
  invalid_state: { status: 401, title: 'This sign-in has expired', text: 'This sign-in is not valid any more (it expired or was already used). Please start again from the partner portal.' },
  exchange_failed: { status: 502, title: 'Connection failed', text: 'CyberSource did not accept the authorization. Please start again from the partner portal; if it keeps failing, contact support with the reference below.' },
  upstream_unavailable: { status: 503, title: 'CyberSource is not reachable', text: 'We could not reach CyberSource to finish connecting your account. Please try again in a few minutes from the partner portal.' },
  merchant_mismatch: { status: 403, title: 'Different merchant account', text: 'You signed in with a different merchant account than the one this link was made for. Nothing was connected. Please sign in with the right account and start again.' },
  storage_unavailable: { status: 503, title: 'Temporarily unavailable', text: 'We could not finish connecting your account because of a temporary problem on our side. Please try again in a few minutes.' },
  browser_mismatch: { status: 403, title: 'Different browser', text: 'This sign-in was started in another browser, or its cookies were cleared. Nothing was connected. Please open the link again in the browser you started from.' },
  invalid_request: { status: 400, title: 'Invalid request', text: 'The link you followed is malformed. Please start again from the partner portal.' },
  rate_limited: { status: 429, title: 'Too many attempts', text: 'Too many requests came from your network. Please wait a minute, then start again from the partner portal.' },
  link_not_found: { status: 404, title: 'Link not found', text: 'This onboarding link does not exist. Please check that you opened the whole link, or get a new one from the partner portal.' },
  link_expired: { status: 410, title: 'This link has expired', text: 'This onboarding link is not valid any more. Please get a new one from the partner portal.' }
}

// Crockford's base32 without I, L, O and U: nothing to mistake when read out on the phone.
const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'

/** A support reference a person can read out: 40 random bits as 'K7QF-3MZD'. */
export function shortReference (): string {
  let n = randomBytes(5).readUIntBE(0, 5)
  let s = ''
  for (let i = 0; i < 8; i++, n = Math.floor(n / 32)) s = ALPHABET[n % 32] + s
  return `${s.slice(0, 4)}-${s.slice(4)}`
}

export const REFERENCE_PATTERN = /^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$/

const ICON = 'data:image/svg+xml,' + encodeURIComponent('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">' +
  '<rect width="16" height="16" rx="3" fill="#0a58a8"/><circle cx="8" cy="8" r="3.5" fill="none" stroke="#fff" stroke-width="2"/></svg>')

// Light and dark palettes; every text pair is at least 4.5:1 on its background, the link and its
// focus ring at least 3:1 against the card (test/src/pages.test.ts computes them).
export const PALETTES = {
  light: { bg: '#eef1f4', card: '#ffffff', text: '#1d2733', muted: '#4f5b68', link: '#0a58a8', rule: '#8a96a3' },
  dark: { bg: '#0e1318', card: '#1a222c', text: '#e7edf3', muted: '#aab5c1', link: '#8fc3ff', rule: '#6b7886' }
} as const

const vars = (p: typeof PALETTES[keyof typeof PALETTES]): string =>
  Object.entries(p).map(([k, v]) => `--${k}: ${v};`).join(' ')

const STYLE = `:root { color-scheme: light dark; ${vars(PALETTES.light)} }
    @media (prefers-color-scheme: dark) { :root { ${vars(PALETTES.dark)} } }
    body { font: 1rem/1.5 system-ui, sans-serif; background: var(--bg); color: var(--text); margin: 0; padding: 0 1rem; }
    main { max-width: 34rem; margin: 10vh auto; background: var(--card); padding: 2rem 2.5rem; border-radius: 8px; box-shadow: 0 2px 12px rgba(0,0,0,.12); }
    .brand { color: var(--muted); font-weight: 600; margin: 0 0 .5rem; }
    h1 { font-size: 1.4rem; line-height: 1.3; margin: 0 0 1rem; }
    .ref { color: var(--muted); font-size: .9rem; border-top: 1px solid var(--rule); padding-top: 1rem; margin-top: 1.5rem; }
    .ref strong { color: var(--text); font: 600 1.05rem ui-monospace, monospace; letter-spacing: .08em; }
    a { color: var(--link); text-underline-offset: .15em; }
    a:hover { text-decoration-thickness: 2px; }
    a:focus-visible { outline: 3px solid var(--link); outline-offset: 3px; border-radius: 2px; }`

/** The portal as the texts name it: 'the partner portal', or 'the Acme portal' when configured. */
const portalName = (b: Branding): string => b.partnerName === undefined ? 'the partner portal' : `the ${b.partnerName} portal`

export function renderPage (title: string, paragraphs: string[], reference: string | undefined, branding: Branding): string {
  const brand = branding.partnerName === undefined ? '' : `\n    <p class="brand">${escapeHtml(branding.partnerName)}</p>`
  const body = paragraphs.map(p => `\n    <p>${escapeHtml(p)}</p>`).join('')
  const ref = reference === undefined
    ? ''
    : `\n    <p class="ref">Reference: <strong>${escapeHtml(reference)}</strong><br>If you contact support, please quote this reference.</p>`
  const back = branding.portalUrl === undefined
    ? ''
    : `\n    <p><a href="${escapeHtml(branding.portalUrl)}">Return to ${escapeHtml(branding.partnerName ?? 'the partner portal')}</a></p>`
  return `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <meta name="referrer" content="no-referrer">
  <meta name="color-scheme" content="light dark">
  <title>${escapeHtml(title)}</title>
  <link rel="icon" href="${escapeHtml(ICON)}">
  <style>
    ${STYLE}
  </style>
</head>
<body>
  <main>${brand}
    <h1>${escapeHtml(title)}</h1>${body}${ref}${back}
  </main>
</body>
</html>
`
}

/** The failure page the merchant's browser sees for a reason (status: FAILURES[reason].status). */
export function failurePage (reason: PageReason, reference: string, branding: Branding): string {
  const f = FAILURES[reason]
  return renderPage(f.title, [f.text.replaceAll('the partner portal', portalName(branding))], reference, branding)
}

const closing = (b: Branding): string => b.portalUrl === undefined
  ? `You can close this window and return to ${portalName(b)}.`
  : 'You can close this window, or use the link below.'

export function successPage (merchantId: string, reference: string, branding: Branding): string {
  const to = branding.partnerName === undefined ? '' : ` to ${branding.partnerName}`
  return renderPage('Account connected', [`Your CyberSource merchant account ${merchantId} is now connected${to}.`, closing(branding)], reference, branding)
}

/** A link that already connected its merchant, opened again. */
export function alreadyConnectedPage (merchantId: string, reference: string, branding: Branding): string {
  return renderPage('Account already connected', [
    `This link was already used: your CyberSource merchant account ${merchantId} is connected, and there is nothing more to do.`,
    closing(branding)
  ], reference, branding)
}

/** The page of an unexpected failure (500). */
export function errorPage (reference: string, branding: Branding): string {
  return renderPage('Something went wrong', [
    `Something unexpected went wrong on our side. Please try again from ${portalName(branding)}; if it keeps failing, contact support with the reference below.`
  ], reference, branding)
}

/**
 * The headers of every answer of the browser routes, beside helmet's: pages must never be cached
 * or leak the callback URL through a Referer.
 */
export function pageHeaders (reply: FastifyReply): FastifyReply {
  return reply.header('cache-control', 'no-store').header('referrer-policy', 'no-referrer')
}
