// The lifecycle section of bench/RESULTS.md (issue 20), between `<!-- lifecycle:start -->` and
// `<!-- lifecycle:end -->`: one subsection per benchmark (keep-alive ticks, webhook deliveries),
// each replaced between its own markers by its own run. The section is appended at the end of the
// file the first time; nothing outside it is touched.
import { readFileSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, totalmem } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Redis } from 'ioredis'
import { num } from './numbers.js'

export const START = '<!-- lifecycle:start -->'
export const END = '<!-- lifecycle:end -->'
export type Part = 'keepalive' | 'webhooks'
const PARTS: Part[] = ['keepalive', 'webhooks']
const COMMANDS: Record<Part, string> = { keepalive: 'npm run bench:keepalive', webhooks: 'npm run bench:webhooks' }
export const partStart = (p: Part): string => `<!-- lifecycle:${p}:start -->`
export const partEnd = (p: Part): string => `<!-- lifecycle:${p}:end -->`

export const resultsPath = (): string => process.env.BENCH_RESULTS ?? join(fileURLToPath(new URL('../..', import.meta.url)), 'bench', 'RESULTS.md')

export interface Machine { cpu: string, cores: number, memory: number, node: string, redis: string }

export async function machine (redis: Redis): Promise<Machine> {
  const info = await redis.info('server')
  return {
    cpu: cpus()[0]?.model.trim() ?? 'unknown CPU',
    cores: cpus().length,
    memory: totalmem(),
    node: process.version,
    redis: /^redis_version:(.*)$/m.exec(info)?.[1]?.trim() ?? 'unknown'
  }
}

export const load = (): string => loadavg().map(l => num(l, 2)).join(' / ')

/** "Run <date> on <machine>; load average (1 / 5 / 15 min) … before, … after." */
export const runLine = (date: string, m: Machine, loadBefore: string, loadAfter: string): string =>
  `Run ${date} on ${m.cpu} (${m.cores} cores, ${num(m.memory / 2 ** 30, 1)} GiB), Node ${m.node}, redis-server ${m.redis}; ` +
  `load average (1 / 5 / 15 min) ${loadBefore} before, ${loadAfter} after (a shared machine: a high load lowers every rate and raises every time).`

const placeholder = (p: Part): string => `${partStart(p)}\n_Not run yet: \`${COMMANDS[p]}\`._\n${partEnd(p)}`

function skeleton (): string {
  return [
    START,
    '## Lifecycle: keep-alive ticks and webhook deliveries (issue 20)',
    '',
    'Each subsection is rewritten by its own benchmark and may come from a different run: check the dates.',
    '',
    ...PARTS.flatMap(p => [placeholder(p), '']),
    END,
    ''
  ].join('\n')
}

/** Replaces the part's subsection (between its markers) inside the lifecycle section, which is appended when missing. */
export function writePart (file: string, part: Part, body: string): void {
  let text = ''
  try { text = readFileSync(file, 'utf8') } catch {}
  if (!text.includes(START) || text.indexOf(END, text.indexOf(START)) < 0) {
    const sep = text === '' || text.endsWith('\n\n') ? '' : text.endsWith('\n') ? '\n' : '\n\n'
    text += sep + skeleton()
  }
  const start = text.indexOf(START)
  const end = text.indexOf(END, start)
  let section = text.slice(start, end)
  const block = `${partStart(part)}\n${body.trimEnd()}\n${partEnd(part)}`
  const from = section.indexOf(partStart(part))
  const to = section.indexOf(partEnd(part), from)
  if (from >= 0 && to >= 0) section = section.slice(0, from) + block + section.slice(to + partEnd(part).length)
  else section = `${section.trimEnd()}\n\n${block}\n\n`
  writeFileSync(file, text.slice(0, start) + section + text.slice(end))
}
