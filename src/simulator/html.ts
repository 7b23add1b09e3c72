// Pages of the simulated Business Center. Every interpolated value goes through escapeHtml.
import { escapeHtml } from '../pages.js'

export { escapeHtml }

// No script, no external resource: the only thing the page may load is its inline style.
export const PAGE_HEADERS = {
  'content-type': 'text/html; charset=utf-8',
  'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
  'x-frame-options': 'DENY',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store'
} as const

/** Colours of the page, one set per colour scheme; test/src/simulator/html.test.ts checks their contrast. */
export const PALETTES = {
  light: {
    page: '#f4f6f8',
    card: '#ffffff',
    text: '#1d2733',
    muted: '#55616d',
    headerBg: '#1a1f71',
    headerText: '#ffffff',
    inputBg: '#ffffff',
    inputBorder: '#697483',
    primaryBg: '#1a1f71',
    primaryText: '#ffffff',
    secondaryText: '#1a1f71',
    focus: '#0b57d0'
  },
  dark: {
    page: '#0f141a',
    card: '#1a2129',
    text: '#e6ebf0',
    muted: '#a9b4bf',
    headerBg: '#232b66',
    headerText: '#e6ebf0',
    inputBg: '#0f141a',
    inputBorder: '#8793a0',
    primaryBg: '#8fa6ff',
    primaryText: '#0b0f2e',
    secondaryText: '#c3cfff',
    focus: '#8ab4f8'
  }
} as const
export type Palette = Record<keyof typeof PALETTES.light, string>

const vars = (p: Palette): string => Object.entries(p).map(([k, v]) => `--${k}:${v}`).join(';')

// The secondary button and both buttons' borders use the primary colour, so every control edge
// is one of the checked pairs; the focus ring sits 2px outside the control, on the card.
const STYLE = `
:root{color-scheme:light dark;${vars(PALETTES.light)}}
@media (prefers-color-scheme:dark){:root{${vars(PALETTES.dark)}}}
body{font-family:system-ui,sans-serif;background:var(--page);color:var(--text);margin:0;line-height:1.45}
header{background:var(--headerBg);color:var(--headerText);padding:14px 24px;font-weight:600}
main{max-width:460px;margin:48px auto;background:var(--card);border-radius:8px;padding:28px;box-shadow:0 1px 4px rgba(0,0,0,.3)}
h1{font-size:1.25rem;margin:0 0 16px}
label{display:block;font-size:.9rem;margin:16px 0 6px}
input[type=text]{width:100%;box-sizing:border-box;padding:8px;font-size:1rem;color:var(--text);background:var(--inputBg);border:1px solid var(--inputBorder);border-radius:4px}
.actions{display:flex;gap:12px;margin-top:24px}
button{flex:1;padding:10px;font-size:1rem;font-weight:600;border-radius:4px;border:2px solid var(--primaryBg);cursor:pointer}
button.allow{background:var(--primaryBg);color:var(--primaryText)}
button.deny{background:var(--card);color:var(--secondaryText)}
:focus-visible{outline:3px solid var(--focus);outline-offset:2px}
input[type=text]:focus{outline:3px solid var(--focus);outline-offset:2px;border-color:var(--focus)}
.muted{color:var(--muted);font-size:.9rem}
ul{padding-left:20px}
@media (forced-colors:active){button,input[type=text]{border:1px solid ButtonText}}
`

function layout (title: string, body: string): string {
  return `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>${escapeHtml(title)}</title><style>${STYLE}</style></head>
<body><header>Business Center (simulator)</header>
<main>${body}</main>
</body>
</html>
`
}

export function errorPage (message: string): string {
  return layout('Authorization error', `<h1>Authorization error</h1><p>${escapeHtml(message)}</p>`)
}

export interface ConsentPageInput {
  action: string
  partnerName: string
  clientId: string
  redirectUrl: string
  state: string | undefined
  merchantId: string
  scopes: string[]
}

export function consentPage (p: ConsentPageInput): string {
  const hidden = (name: string, value: string): string =>
    `<input type="hidden" name="${name}" value="${escapeHtml(value)}">`
  const scopes = p.scopes.map(s => `<li>${escapeHtml(s)}</li>`).join('')
  return layout('Authorize application', `<h1>${escapeHtml(p.partnerName)} wants access to your account</h1>
<p class="muted">It will be able to use these APIs on your behalf:</p>
<ul>${scopes}</ul>
<form method="post" action="${escapeHtml(p.action)}">
${hidden('client_id', p.clientId)}
${hidden('redirect_url', p.redirectUrl)}
${p.state === undefined ? '' : hidden('state', p.state)}
<label for="merchant_id">Merchant ID</label>
<input type="text" id="merchant_id" name="merchant_id" value="${escapeHtml(p.merchantId)}" required maxlength="64" pattern="[A-Za-z0-9_\\-]{1,64}" autocomplete="off">
<div class="actions">
<button type="submit" class="allow" name="decision" value="allow">Allow</button>
<button type="submit" class="deny" name="decision" value="deny" formnovalidate>Deny</button>
</div>
</form>
<p class="muted">You will be sent back to ${escapeHtml(p.redirectUrl)}</p>`)
}
