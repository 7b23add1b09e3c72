// Generators of hostile input for the fuzz suites (test/fuzz/*.test.ts): text, path segments,
// query strings, credentials, correlation ids, content types and bodies. Credentials are
// generated as descriptions, turned into headers only inside a property, so a counterexample
// never shows a secret.
import fc from 'fast-check'

// ---------------------------------------------------------------------------------------------
// Text

/** Pieces that break naive code: separators, escapes, markup, prototype keys, odd Unicode. */
const PIECES = [
  '\u2028', '\u2029', '\n', '\r\n', '\r', '\t', '\u0000', '\u001b[31m', '\u007f', '\u0085', '\u00a0',
  '\u200b', '\u202e', '\ufeff', '\ud800', '\udfff', '\u{1F600}', 'é', 'e\u0301', '..', '.', '/', '\\',
  '%', '%00', '%0a', '%zz', '%E2%80%A8', '%25', '+', ' ', '?', '#', '&', '=', ';', ':', '@', '*',
  '[]', '{}', '<', '>', '"', "'", '`', '<script>alert(1)</script>', '"><img src=x onerror=alert(1)>',
  "';--", '$' + '{7*7}', '{{7*7}}', '__proto__', 'constructor', 'prototype', 'null', 'undefined', 'NaN',
  '-1', '0', '1e308', 'true', '[object Object]', 'm_fuzz_1'
]

export const hostileText: fc.Arbitrary<string> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.array(fc.oneof(fc.constantFrom(...PIECES), fc.string({ maxLength: 6 }), fc.string({ unit: 'binary', maxLength: 3 })), { minLength: 1, maxLength: 8 })
      .map(parts => parts.join(''))
  },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'grapheme', maxLength: 40 }) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom('a', 'é', '<', '\u2028', '%', '"'), fc.integer({ min: 60, max: 3000 })).map(([c, n]) => c.repeat(n)) }
)

/** Text that is visibly markup: checked against every HTML answer. */
export const markup: fc.Arbitrary<string> = fc.tuple(fc.string({ maxLength: 4 }), fc.constantFrom('<script>x</script>', '"><b>', "'><i x='", '<img src=x>', '"onmouseover="x', '</title><h1>'), fc.string({ maxLength: 4 }))
  .map(([a, m, b]) => a + m + b)

export const validUnknownId = fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/).filter(id => !id.startsWith('m_fuzz'))

/** A merchant id as a caller might send it: a real one, a well-formed unknown one, or hostile text. */
export function merchantIdText (real: readonly string[]): fc.Arbitrary<string> {
  const options: Array<fc.WeightedArbitrary<string>> = [
    { weight: 2, arbitrary: validUnknownId },
    { weight: 6, arbitrary: hostileText },
    { weight: 1, arbitrary: markup }
  ]
  if (real.length > 0) options.push({ weight: 2, arbitrary: fc.constantFrom(...real) })
  return fc.oneof(...options)
}

// ---------------------------------------------------------------------------------------------
// URLs

/** UTF-8 bytes of one code point; a lone surrogate gets the bytes no decoder accepts. */
function utf8 (cp: number): number[] {
  if (cp < 0x80) return [cp]
  if (cp < 0x800) return [0xc0 | (cp >> 6), 0x80 | (cp & 0x3f)]
  if (cp < 0x10000) return [0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f)]
  return [0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3f), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f)]
}

const hex = (b: number): string => `%${b.toString(16).toUpperCase().padStart(2, '0')}`
const isLoneSurrogate = (cp: number): boolean => cp >= 0xd800 && cp <= 0xdfff

/**
 * `text` percent-encoded for a path segment or a query component: characters that must be
 * encoded always are; the others are encoded where `mask` has a bit set (the same text, spelled
 * differently). `safe` is the set left as is.
 */
export function encodeText (text: string, mask: number, safe: RegExp): { raw: string, decodable: boolean } {
  let raw = ''
  let decodable = true
  let i = 0
  for (const ch of text) {
    const cp = ch.codePointAt(0) ?? 0
    if (isLoneSurrogate(cp)) decodable = false
    raw += safe.test(ch) && (mask & (1 << (i++ % 30))) === 0 ? ch : utf8(cp).map(hex).join('')
  }
  return { raw, decodable }
}

const PATH_SAFE = /^[A-Za-z0-9\-._~!$&'()*+,;=:@]$/
const QUERY_SAFE = /^[A-Za-z0-9\-._~!$'()*,:@/]$/

export interface Segment {
  /** As it appears in the URL. */
  raw: string
  /** What the router decodes it to (undefined: it cannot be decoded). */
  text: string | undefined
}

/** A path segment carrying `text`, sometimes with an escape that cannot be decoded. */
export function segment (text: fc.Arbitrary<string>): fc.Arbitrary<Segment> {
  // Broken wherever they stand; the truncated ones only at the end, where nothing completes them.
  const anywhere = fc.tuple(fc.constantFrom('%G0', '%%', '%u2028', '%zz'), fc.nat(40))
  const atEnd = fc.tuple(fc.constantFrom('%', '%E0%A4', '%C3', '%F0%9F%98', '%2'), fc.constant(Number.MAX_SAFE_INTEGER))
  return fc.tuple(text, fc.nat(), fc.option(fc.oneof(anywhere, atEnd), { freq: 12 }))
    // app.inject resolves dot segments as every URL parser does: they never reach the router
    // as segments (test/fuzz/raw-http covers them over a socket).
    .filter(([s]) => s !== '.' && s !== '..')
    .map(([s, mask, bad]) => {
      const { raw, decodable } = encodeText(s, mask, PATH_SAFE)
      if (bad === null) return { raw, text: decodable ? s : undefined }
      const [escape, at] = bad
      const cut = Math.min(at, raw.length)
      return { raw: raw.slice(0, cut) + escape + raw.slice(cut), text: undefined }
    })
}

/** A fixed path (e.g. /oauth/connect), some of its letters percent-encoded: the same route. */
export function spelledPath (path: string): fc.Arbitrary<string> {
  const spell = (mask: number): string => [...path].map((c, i) => /[A-Za-z]/.test(c) && (mask & (1 << (i % 30))) !== 0 ? hex(c.charCodeAt(0)) : c).join('')
  return fc.oneof({ weight: 3, arbitrary: fc.constant(path) }, { weight: 1, arbitrary: fc.nat().map(spell) })
}

export interface QueryPair { key: string, value: string | undefined }

const QUERY_KEYS = [
  'limit', 'cursor', 'merchant_id', 'code', 'state', '__proto__', 'constructor', 'prototype',
  'hasOwnProperty', 'toString', 'a[]', 'limit[]', 'cursor[0]', '__proto__[polluted]',
  'constructor[prototype][polluted]', 'error', 'redirect_url', ''
]

export const queryValue: fc.Arbitrary<string> = fc.oneof(
  { weight: 4, arbitrary: hostileText },
  { weight: 2, arbitrary: fc.integer({ min: -1000, max: 1_000_000 }).map(String) },
  { weight: 1, arbitrary: fc.constantFrom('1e2', ' 5', '5.5', '0x10', '1_0', 'Infinity', '-0', '', '00001', '99999999999999999999') },
  { weight: 1, arbitrary: fc.integer({ min: 2000, max: 9000 }).map(n => 'q'.repeat(n)) },
  { weight: 1, arbitrary: markup }
)

/** Query pairs: known keys and hostile ones, repeated at times, values hostile. */
export function queryPairs (keys: readonly string[] = QUERY_KEYS, maxLength = 5): fc.Arbitrary<QueryPair[]> {
  const key = fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...keys) }, { weight: 1, arbitrary: hostileText })
  return fc.array(fc.record({ key, value: fc.option(queryValue, { freq: 8 }).map(v => v ?? undefined) }), { maxLength })
}

/** The query string of `pairs` (with its '?'), encoded per `mask`, spaces sometimes as '+'. */
export function queryString (pairs: QueryPair[], mask: number, plus: boolean): string {
  if (pairs.length === 0) return ''
  const enc = (s: string): string => {
    const { raw } = encodeText(s, mask, QUERY_SAFE)
    return plus ? raw.replace(/%20/g, '+') : raw
  }
  return '?' + pairs.map(p => p.value === undefined ? enc(p.key) : `${enc(p.key)}=${enc(p.value)}`).join('&')
}

export const queryEncoding = fc.record({ mask: fc.nat(), plus: fc.boolean() })

/** A query component, percent-encoded (a lone surrogate as the bytes no decoder takes). */
export const encodeQuery = (s: string): string => encodeText(s, 0, QUERY_SAFE).raw

// ---------------------------------------------------------------------------------------------
// Headers

/** How a request presents its credentials (a description: counterexamples never show a secret). */
export type AuthCase =
  | { kind: 'valid', caller: 'payments' | 'reports', scheme: string }
  | { kind: 'missing' }
  | { kind: 'garbage', value: string, scheme: boolean }
  | { kind: 'near', op: 'flip' | 'drop' | 'add' | 'case' | 'double-space' | 'tab' | 'no-scheme' | 'basic' | 'trailing-space' | 'quoted' | 'twice' | 'colon', index: number }
  | { kind: 'huge', length: number }

export const authCase: fc.Arbitrary<AuthCase> = fc.oneof(
  { weight: 16, arbitrary: fc.record({ kind: fc.constant('valid' as const), caller: fc.constantFrom('payments' as const, 'reports' as const), scheme: fc.constantFrom('Bearer', 'bearer', 'BEARER', 'BeArEr') }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'missing' as const }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('garbage' as const), value: hostileText, scheme: fc.boolean() }) },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant('near' as const),
      op: fc.constantFrom('flip' as const, 'drop' as const, 'add' as const, 'case' as const, 'double-space' as const, 'tab' as const, 'no-scheme' as const, 'basic' as const, 'trailing-space' as const, 'quoted' as const, 'twice' as const, 'colon' as const),
      index: fc.nat(80)
    })
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('huge' as const), length: fc.integer({ min: 1000, max: 70_000 }) }) }
)

export interface Credentials { payments: string, reports: string }

/** The Authorization header of `c`, and whether it names a configured secret exactly. */
export function authorization (c: AuthCase, creds: Credentials): { value: string | undefined, valid: boolean, presented: string | undefined } {
  const secret = creds.payments
  let value: string | undefined
  switch (c.kind) {
    case 'valid': value = `${c.scheme} ${creds[c.caller]}`; break
    case 'missing': value = undefined; break
    case 'garbage': value = c.scheme ? `Bearer ${c.value}` : c.value; break
    case 'huge': value = `Bearer ${secret}${'x'.repeat(c.length)}`; break
    case 'near': {
      const i = c.index % secret.length
      const swap = (s: string): string => s === s.toLowerCase() ? s.toUpperCase() : s.toLowerCase()
      const near = {
        flip: secret.slice(0, i) + (secret[i] === 'A' ? 'B' : 'A') + secret.slice(i + 1),
        drop: secret.slice(0, i) + secret.slice(i + 1),
        add: secret.slice(0, i) + 'x' + secret.slice(i),
        case: secret.slice(0, i) + swap(secret[i]) + secret.slice(i + 1),
        'double-space': ` ${secret}`,
        tab: `\t${secret}`,
        'no-scheme': '',
        basic: '',
        'trailing-space': `${secret} `,
        quoted: `"${secret}"`,
        twice: `${secret}, Bearer ${secret}`,
        colon: ''
      }[c.op]
      value = c.op === 'no-scheme'
        ? secret
        : c.op === 'basic'
          ? `Basic ${Buffer.from(`payments:${secret}`).toString('base64')}`
          : c.op === 'colon' ? `Bearer:${secret}` : `Bearer ${near}`
    }
  }
  const m = value === undefined ? null : /^bearer ([\x21-\x7e]+)$/i.exec(value)
  const valid = m !== null && (m[1] === creds.payments || m[1] === creds.reports)
  return { value, valid, presented: valid ? undefined : value }
}

export const correlationCase: fc.Arbitrary<string | undefined> = fc.option(fc.oneof(
  { weight: 3, arbitrary: fc.stringMatching(/^[A-Za-z0-9._-]{8,64}$/) },
  { weight: 3, arbitrary: hostileText },
  { weight: 1, arbitrary: fc.constantFrom('abcdefg', 'a'.repeat(65), 'abcdefgh\nx', 'abcdefgh ', ' abcdefgh', 'abcdefgh\u2028', '../../../etc', 'abcdefgh%0a', '<script>1</script>') },
  { weight: 1, arbitrary: markup }
), { freq: 3 }).map(v => v ?? undefined)

export const contentType: fc.Arbitrary<string | undefined> = fc.oneof(
  { weight: 6, arbitrary: fc.constant('application/json') },
  {
    weight: 4,
    arbitrary: fc.constantFrom(
      undefined, 'application/json; charset=utf-8', 'APPLICATION/JSON', 'application/json; charset=utf-16',
      'application/json;', 'application/jsonx', 'application/x-www-form-urlencoded', 'text/plain',
      'text/html', 'multipart/form-data; boundary=x', 'application/xml', '', ';', 'application/json, text/plain',
      '*/*', 'application/json; charset="\u2028"', 'application/problem+json', 'application/json\u0000'
    )
  },
  { weight: 1, arbitrary: hostileText }
)

// ---------------------------------------------------------------------------------------------
// Bodies

const jsonLeaf: fc.Arbitrary<unknown> = fc.oneof(
  hostileText, fc.integer(), fc.double(), fc.boolean(), fc.constant(null), validUnknownId, markup
)

/** A JSON body (as text): objects with hostile fields, wrong types, nesting, prototype keys, or not JSON at all. */
export type BodyCase =
  | { kind: 'none' }
  | { kind: 'object', fields: Array<[string, unknown]> }
  | { kind: 'value', value: unknown }
  | { kind: 'deep', depth: number, open: 'array' | 'object' }
  | { kind: 'huge', length: number }
  | { kind: 'text', text: string }

export function bodyCase (merchantIds: fc.Arbitrary<string>): fc.Arbitrary<BodyCase> {
  const merchantValue = fc.oneof(
    { weight: 4, arbitrary: merchantIds },
    { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 2 }) },
    { weight: 1, arbitrary: jsonLeaf }
  )
  const otherKey = fc.oneof(
    fc.constantFrom('__proto__', 'constructor', 'prototype', 'merchantId', 'MERCHANT_ID', 'merchant_id ', 'redirect_url', 'state'),
    hostileText
  ).filter(k => k !== 'merchant_id')
  const fields = fc.tuple(
    fc.option(merchantValue, { freq: 5 }),
    fc.uniqueArray(fc.tuple(otherKey, fc.oneof(jsonLeaf, fc.jsonValue({ maxDepth: 3 }))), { maxLength: 3, selector: ([k]) => k })
  ).map(([m, extra]) => [...(m === null ? [] : [['merchant_id', m] as [string, unknown]]), ...extra])
  return fc.oneof(
    { weight: 2, arbitrary: fc.constant({ kind: 'none' as const }) },
    { weight: 10, arbitrary: fields.map(f => ({ kind: 'object' as const, fields: f })) },
    { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 3 }).map(value => ({ kind: 'value' as const, value })) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('deep' as const), depth: fc.integer({ min: 10, max: 9000 }), open: fc.constantFrom('array' as const, 'object' as const) }) },
    { weight: 1, arbitrary: fc.integer({ min: 10_000, max: 40_000 }).map(length => ({ kind: 'huge' as const, length })) },
    { weight: 2, arbitrary: fc.oneof(hostileText, fc.constantFrom('{', '{"merchant_id":', '{"merchant_id":"a"', "{'merchant_id':'a'}", '{"merchant_id":"a",}', 'merchant_id=a', 'null', '[]', '""', '\ufeff{}', '{"__proto__":{"x":1}}', '{"constructor":{"prototype":{"x":1}}}', '{"merchant_id":"a","merchant_id":"b c"}')).map(text => ({ kind: 'text' as const, text })) }
  )
}

/** The text of a body (undefined: no body). Keys are written as given, `__proto__` included. */
export function bodyText (c: BodyCase): string | undefined {
  switch (c.kind) {
    case 'none': return undefined
    case 'object': return `{${c.fields.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v) ?? 'null'}`).join(',')}}`
    case 'value': return JSON.stringify(c.value) ?? 'null'
    case 'deep': return c.open === 'array' ? '['.repeat(c.depth) + ']'.repeat(c.depth) : '{"a":'.repeat(c.depth) + '1' + '}'.repeat(c.depth)
    case 'huge': return JSON.stringify({ merchant_id: 'x'.repeat(c.length) })
    case 'text': return c.text
  }
}
