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

const STYLE = `
body{font-family:system-ui,sans-serif;background:#f4f6f8;color:#1d2733;margin:0}
header{background:#1a1f71;color:#fff;padding:14px 24px;font-weight:600}
main{max-width:460px;margin:48px auto;background:#fff;border-radius:8px;padding:28px;box-shadow:0 1px 4px rgba(0,0,0,.12)}
h1{font-size:1.25rem;margin:0 0 16px}
label{display:block;font-size:.9rem;margin:16px 0 6px}
input[type=text]{width:100%;box-sizing:border-box;padding:8px;font-size:1rem;border:1px solid #9aa5b1;border-radius:4px}
.actions{display:flex;gap:12px;margin-top:24px}
button{flex:1;padding:10px;font-size:1rem;border-radius:4px;border:1px solid #1a1f71;cursor:pointer}
button.allow{background:#1a1f71;color:#fff}
button.deny{background:#fff;color:#1a1f71}
.muted{color:#5a6672;font-size:.85rem}
ul{padding-left:20px}
`

function layout (title: string, body: string): string {
  return `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
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
