// The HTML pages the merchant's browser sees on the browser-facing routes (/oauth/*): one renderer,
// the failure page of every reason, and the headers every such answer carries. No script, form or
// third-party resource; every dynamic value is escaped.
import type { FastifyReply } from 'fastify'
import type { FailureReason } from './onboarding.js'

export type PageReason = FailureReason | 'invalid_request' | 'rate_limited'

const ENTITIES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }
export const escapeHtml = (s: string): string => s.replace(/[&<>"']/g, c => ENTITIES[c])

export const FAILURES: Record<PageReason, { status: number, title: string, text: string }> = {
  access_denied: { status: 200, title: 'Connection cancelled', text: 'You did not allow access, so nothing was connected. You can close this window, or start again from the partner portal.' },
  invalid_state: { status: 401, title: 'This link has expired', text: 'This sign-in link is not valid any more (it expired or was already used). Please start again from the partner portal.' },
  exchange_failed: { status: 502, title: 'Connection failed', text: 'CyberSource did not accept the authorization. Please start again from the partner portal; if it keeps failing, contact support with the reference below.' },
  upstream_unavailable: { status: 503, title: 'CyberSource is not reachable', text: 'We could not reach CyberSource to finish connecting your account. Please try again in a few minutes from the partner portal.' },
  merchant_mismatch: { status: 403, title: 'Different merchant account', text: 'You signed in with a different merchant account than the one this link was made for. Nothing was connected. Please sign in with the right account and start again.' },
  storage_unavailable: { status: 503, title: 'Temporarily unavailable', text: 'We could not finish connecting your account because of a temporary problem on our side. Please try again in a few minutes.' },
  invalid_request: { status: 400, title: 'Invalid request', text: 'The link you followed is malformed. Please start again from the partner portal.' },
  rate_limited: { status: 429, title: 'Too many attempts', text: 'Too many requests came from your network. Please wait a minute, then start again from the partner portal.' }
}

export function renderPage (title: string, paragraphs: string[], correlationId?: string): string {
  const body = paragraphs.map(p => `<p>${escapeHtml(p)}</p>`).join('\n    ')
  const ref = correlationId === undefined ? '' : `\n    <p class="ref">Reference: <code>${escapeHtml(correlationId)}</code></p>`
  return `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <meta name="referrer" content="no-referrer">
  <title>${escapeHtml(title)}</title>
  <style>
    body { font-family: system-ui, sans-serif; background: #f4f6f8; color: #1d2733; margin: 0; }
    main { max-width: 32rem; margin: 12vh auto; background: #fff; padding: 2rem 2.5rem; border-radius: 8px; box-shadow: 0 2px 12px rgba(0,0,0,.08); }
    h1 { font-size: 1.4rem; margin-top: 0; }
    .ref { color: #6b7785; font-size: .85rem; }
  </style>
</head>
<body>
  <main>
    <h1>${escapeHtml(title)}</h1>
    ${body}${ref}
  </main>
</body>
</html>
`
}

/** The failure page the merchant's browser sees for a reason. */
export function failurePage (reason: PageReason, correlationId: string): string {
  const f = FAILURES[reason]
  return renderPage(f.title, [f.text], correlationId)
}

/**
 * The headers of every answer of the browser routes, beside helmet's: pages must never be cached
 * or leak the callback URL through a Referer.
 */
export function pageHeaders (reply: FastifyReply): FastifyReply {
  return reply.header('cache-control', 'no-store').header('referrer-policy', 'no-referrer')
}
