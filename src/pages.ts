// The small HTML pages the merchant's browser sees after the callback.
const ENTITIES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }
export const escapeHtml = (s: string): string => s.replace(/[&<>"']/g, c => ENTITIES[c])

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
