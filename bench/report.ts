// The report, bench/RESULTS.md: the figures of a run, as table rows and values, put into the text
// of bench/report-template.md. The file holds the timed report, then the instruction counts;
// each mode rewrites its own part and keeps the other.
import { readFileSync, writeFileSync } from 'node:fs'
import { cpus } from 'node:os'
import { join } from 'node:path'
import { steadyCount } from './callgrind.js'
import { CLIENT_CORE, SERVER_CORE } from './children.js'
import type { Measurements, Sample, Target } from './load.js'
import { median, num, perRequest } from './numbers.js'
import { BenchError, ROOT, type Settings } from './settings.js'

/** The lookup's goal: this share of the same-size static route's requests per second (issue 16). */
const GOAL = 0.8
import type { Answer } from './targets.js'

const TEMPLATE = join(ROOT, 'bench', 'report-template.md')
const INSTRUCTIONS_MARKER = '<!-- instruction counts: npm run bench:instructions -->'
/** What follows this marker (notes kept by hand, the scale benchmark's section) no mode rewrites. */
const KEPT_MARKER = '<!-- kept: not written by npm run bench -->'

type Values = Record<string, string | boolean>

/** The report named `name` of the template, with `values` put in. */
function fill (name: string, values: Values): string {
  const parts = readFileSync(TEMPLATE, 'utf8').split(/^<!-- report: ([a-z-]+) -->\n/m)
  const at = parts.indexOf(name)
  if (at < 1 || at % 2 === 0) throw new BenchError(`${TEMPLATE}: no report ${name}`)
  const value = (key: string): string | boolean => {
    if (!(key in values)) throw new BenchError(`${TEMPLATE}: no value for {{${key}}} in report ${name}`)
    return values[key]
  }
  return parts[at + 1]
    .replace(/\{\{([#^])(\w+)\}\}([\s\S]*?)\{\{\/\2\}\}/g, (_all, kind: string, key: string, text: string) => Boolean(value(key)) === (kind === '#') ? text : '')
    .replace(/\{\{(\w+)\}\}/g, (_all, key: string) => String(value(key)))
    .trimEnd() + '\n'
}

const machine = (): string => {
  const cpu = cpus()
  return `${cpu.length} cores (${cpu[0]?.model.trim() ?? 'unknown'})`
}
const node = (): string => `${process.version} (${process.platform}/${process.arch})`

/** The broker's ratios, in report order: the other target, and the row's label. */
function comparisons (settings: Settings): Array<[string, string]> {
  return [
    ['static', 'broker / static same size'],
    ['hello', 'broker / hello world'],
    ['naive', 'broker / naive path (what the cache buys)'],
    ...settings.compare.map((b): [string, string] => [b.name, `broker / ${b.name}`])
  ]
}

export interface TimedRun {
  targets: Target[]
  samples: Map<string, Sample[]>
  answers: Map<string, Answer>
  bodyBytes: number
  tokenBytes: number
  audit: string[]
  load: [number, number]
}

export function renderTimed (settings: Settings, r: TimedRun): string {
  const med = (name: string, k: keyof Sample): number => median((r.samples.get(name) ?? []).map(s => s[k]))
  const ratio = (a: string, b: string): number => med(a, 'rps') / med(b, 'rps')
  /** The same ratio within each round (the broker and the static route took turns), median. */
  const roundRatio = (a: string, b: string): number => {
    const xs = r.samples.get(a) ?? []
    const ys = r.samples.get(b) ?? []
    return median(xs.slice(0, ys.length).map((x, i) => x.rps / ys[i].rps))
  }
  /** b's CPU per request over a's: how many a-requests cost what one b-request costs. */
  const cpuRatio = (a: string, b: string, k: 'cpuUs' | 'cpuAtRateUs'): number => med(b, k) / med(a, k)
  /** How busy a target kept its core while loaded as fast as it goes (1 = saturated), median. */
  const busy = (name: string): number => median((r.samples.get(name) ?? []).map(s => s.rps * s.cpuUs / 1e6))
  // The goal counts as met only when both estimates reach it, and only when the static route
  // saturated its core: otherwise autocannon was the bottleneck, and every ratio is overstated.
  const vsStatic = Math.min(ratio('broker', 'static'), roundRatio('broker', 'static'))
  const goal = Number.isNaN(vsStatic)
    ? 'n/a'
    : vsStatic < GOAL ? 'NOT met' : busy('static') >= 0.9 ? 'met' : `not measured: the static route kept its core only ${num(100 * busy('static'))} % busy (the client was the bottleneck)`
  const rows = r.targets.map(t => {
    const s = r.samples.get(t.name) ?? []
    const a = r.answers.get(t.name)
    const bytes = a === undefined ? '' : `${a.headerBytes} + ${Buffer.byteLength(a.body)}`
    return `| ${t.name} | ${t.label} | ${num(med(t.name, 'rps'))} | ${num(med(t.name, 'p50'))} | ${num(med(t.name, 'p99'))} | ${num(med(t.name, 'cpuUs'), 1)} | ${num(100 * busy(t.name))} % | ${num(med(t.name, 'cpuAtRateUs'), 1)} | ${bytes} | ${s.map(x => num(x.rps)).join(' / ')} | ${s.map(x => num(x.p99)).join(' / ')} |`
  })
  const ratioRow = (label: string, other: string, goal = ''): string =>
    `| ${label} | ${num(ratio('broker', other), 2)} | ${num(roundRatio('broker', other), 2)} | ${num(cpuRatio('broker', other, 'cpuUs'), 2)} | ${num(cpuRatio('broker', other, 'cpuAtRateUs'), 2)} | ${goal} |`
  const ratios = comparisons(settings).filter(([other]) => r.samples.has(other))
    .map(([other, label]) => ratioRow(label, other, other === 'static' ? `>= ${GOAL} (req/s, both estimates): ${goal}` : ''))
  return fill('time', {
    date: new Date().toISOString(),
    node: node(),
    machine: machine(),
    loadBefore: num(r.load[0], 1),
    loadAfter: num(r.load[1], 1),
    pin: settings.pin,
    clientCore: CLIENT_CORE,
    serverCore: SERVER_CORE,
    connections: String(settings.connections),
    pipelining: String(settings.pipelining),
    warmupS: String(settings.warmupS),
    fullS: String(Math.ceil(settings.durationS / settings.sliceS) * settings.sliceS),
    fixedRate: settings.fixedRps > 0,
    fixedS: String(settings.fixedS),
    rate: num(settings.fixedRps),
    rounds: String(settings.rounds),
    compare: settings.compare.length > 0,
    sliceS: String(settings.sliceS),
    restart: settings.restart,
    tokenBytes: String(r.tokenBytes),
    bodyBytes: String(r.bodyBytes),
    audit: r.audit.join(', '),
    rows: rows.join('\n'),
    ratios: ratios.join('\n')
  })
}

export function renderInstructions (settings: Settings, targets: Target[], m: Measurements, bodyBytes: number): string {
  const n = settings.instrCount
  const steady = (name: string): number => {
    const c = m.counts.get(name)
    return c === undefined ? NaN : steadyCount(c) / n
  }
  const rows = targets.map(t => {
    const c = m.counts.get(t.name)
    const each = (m.windows.get(t.name) ?? []).map(w => perRequest(steadyCount(w), n)).join(' / ')
    return `| ${t.name} | ${t.label} | ${perRequest(c === undefined ? NaN : steadyCount(c), n)} | ${each} | ${perRequest(c?.compiler ?? NaN, n)} | ${perRequest(c?.total ?? NaN, n)} |`
  })
  // The other target's count over the broker's: read like a req/s ratio (1 is as cheap).
  const ratios = comparisons(settings).filter(([other]) => m.counts.has(other) && m.counts.has('broker'))
    .map(([other, label]) => `| ${label} | ${num(steady(other) / steady('broker'), 2)} |`)
  return fill('instructions', {
    date: new Date().toISOString(),
    node: node(),
    machine: machine(),
    bodyBytes: String(bodyBytes),
    connections: String(settings.connections),
    warmup: num(settings.instrWarmup),
    windows: num(settings.instrWindows),
    count: num(n),
    rows: rows.join('\n'),
    ratios: ratios.join('\n')
  })
}

/** The instruction section of a machine without valgrind: `missing` names the tools not found. */
export function renderSkipped (missing: string[]): string {
  return fill('instructions-skipped', { date: new Date().toISOString(), missing: missing.join(', ') })
}

/** Writes the report of this run's mode, keeping the other mode's part of the file. */
export function writeResults (settings: Settings, report: string): void {
  let previous = ''
  try { previous = readFileSync(settings.results, 'utf8') } catch {}
  const keptAt = previous.indexOf(KEPT_MARKER)
  const kept = keptAt < 0 ? '' : `\n${previous.slice(keptAt)}`
  const generated = keptAt < 0 ? previous : previous.slice(0, keptAt).replace(/\n+$/, '\n')
  const at = generated.indexOf(INSTRUCTIONS_MARKER)
  const [timed, counted] = at < 0 ? [generated, ''] : [generated.slice(0, at), generated.slice(at)]
  writeFileSync(settings.results, settings.instructions ? `${timed}${INSTRUCTIONS_MARKER}\n${report}${kept}` : `${report}${counted}${kept}`)
}
