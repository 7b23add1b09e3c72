// Reading the project's Markdown documents for the docs tests: which files, their links, their
// headings as GitHub makes anchors of them, and the sections under a heading.
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const ROOT = fileURLToPath(new URL('../../', import.meta.url))

/** README.md, docs/*.md, and the READMEs of bench/, plugins/ and routes/ when present (repository paths). */
export function documents (): string[] {
  const docs = existsSync(join(ROOT, 'docs'))
    ? readdirSync(join(ROOT, 'docs')).filter(f => f.endsWith('.md')).sort().map(f => `docs/${f}`)
    : []
  const readmes = ['bench/README.md', 'plugins/README.md', 'routes/README.md'].filter(f => existsSync(join(ROOT, f)))
  return ['README.md', ...docs, ...readmes]
}

export const read = (path: string): string => readFileSync(join(ROOT, path), 'utf8')

/** The lines of a document, with those of fenced code blocks (fences included) as undefined. */
function unfenced (markdown: string): Array<string | undefined> {
  let fence: string | undefined
  return markdown.split('\n').map(line => {
    const m = /^\s{0,3}(`{3,}|~{3,})(.*)$/.exec(line)
    if (fence === undefined) {
      if (m === null) return line
      fence = m[1]
      return undefined
    }
    // A closing fence: the same character, at least as long, nothing after it.
    if (m !== null && m[1][0] === fence[0] && m[1].length >= fence.length && m[2].trim() === '') fence = undefined
    return undefined
  })
}

/** The text with fenced code blocks blanked (line numbers kept) and inline code spans removed. */
export function prose (markdown: string): string {
  return unfenced(markdown).map(line => line === undefined ? '' : line.replace(/(`+)[\s\S]*?\1/g, '')).join('\n')
}

export interface Link { target: string, line: number }

/** Inline links and images `[text](target "title")`, reference definitions `[id]: target`, and HTML href/src. */
export function links (markdown: string): Link[] {
  const found: Link[] = []
  for (const [i, line] of prose(markdown).split('\n').entries()) {
    for (const m of line.matchAll(/!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]*)>?(?:\s+["'(][^)]*)?\)/g)) found.push({ target: m[1], line: i + 1 })
    const def = /^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$/.exec(line)
    if (def !== null) found.push({ target: def[1], line: i + 1 })
    for (const m of line.matchAll(/\b(?:href|src)\s*=\s*["']([^"']*)["']/g)) found.push({ target: m[1], line: i + 1 })
  }
  return found
}

/** GitHub's anchor of a heading: inline markup dropped, lower case, punctuation removed, spaces to hyphens. */
export function slug (heading: string): string {
  const text = heading
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1') // links and images: their text
    .replace(/<[^>]+>/g, '') // inline HTML tags
    .replace(/[`*]/g, '')
    .trim()
    .toLowerCase()
  return text.replace(/[^\p{L}\p{M}\p{N}\p{Pc}\- ]/gu, '').replace(/ /g, '-')
}

/** The anchors a document offers: one per heading (repeats numbered -1, -2… as GitHub does), plus HTML ids. */
export function anchors (markdown: string): Set<string> {
  const seen = new Map<string, number>()
  const out = new Set<string>()
  // Headings are read outside fenced code only, with their code spans kept.
  for (const line of unfenced(markdown)) {
    if (line === undefined) continue
    const h = /^\s{0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$/.exec(line)
    if (h !== null) {
      const base = slug(h[1])
      const n = seen.get(base) ?? 0
      seen.set(base, n + 1)
      out.add(n === 0 ? base : `${base}-${n}`)
    }
    for (const m of line.matchAll(/\b(?:id|name)\s*=\s*["']([^"']+)["']/g)) out.add(m[1])
  }
  return out
}

/** The lines of a section: from the heading line `heading` to the next heading of the same or a higher level. */
export function section (markdown: string, heading: string): string | undefined {
  const level = /^#+/.exec(heading)?.[0].length ?? 0
  const lines = markdown.split('\n')
  const plain = unfenced(markdown)
  const start = plain.findIndex(l => l?.trim() === heading)
  if (start < 0) return undefined
  const higher = new RegExp(`^#{1,${level}}\\s`)
  const end = plain.findIndex((l, i) => i > start && l !== undefined && higher.test(l))
  return lines.slice(start + 1, end < 0 ? undefined : end).join('\n')
}

/** The cells of the body rows of the Markdown tables of a text (header and separator rows left out). */
export function tableRows (text: string): string[][] {
  const rows = text.split('\n')
    .filter(l => l.trim().startsWith('|'))
    .map(l => l.trim().replace(/^\||\|$/g, '').split(/(?<!\\)\|/).map(c => c.trim()))
  const isSeparator = (cells: string[] | undefined): boolean => cells !== undefined && cells.every(c => /^:?-+:?$/.test(c))
  return rows.filter((cells, i) => !isSeparator(cells) && !isSeparator(rows[i + 1]))
}
