// The keep-alive benchmark's subsection of bench/RESULTS.md (written by bench/keepalive.ts).
import { num } from './numbers.js'
import { runLine, type Machine } from './lifecycle-report.js'

/** Commands seen by MONITOR: sent by the service, run by its scripts inside Redis, and by name. */
export interface Counted { sent: number, inScripts: number, byName: Map<string, number> }

export interface KeepAliveBench {
  date: string
  machine: Machine
  load: [string, string]
  total: number
  due: number
  idleEntries: number
  scheduleBytes: number
  idleTicks: number
  idle: { commands: Counted, times: number[] }
  /** counted: renewals of the MONITOR pass; the rest from the timed pass. */
  renewal: { commands: Counted, counted: number, renewed: number, seconds: number, ticks: number[], claims: number[] }
  leftDue: number
  refreshes: number
}

const quantile = (xs: number[], q: number): number => xs.length === 0 ? NaN : [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))]
const us = (ms: number): string => ms < 10 ? `${num(ms * 1000)} µs` : `${num(ms, 1)} ms`
const spread = (xs: number[]): string => `${us(quantile(xs, 0.5))} / ${us(quantile(xs, 0.9))} / ${us(quantile(xs, 0.99))}`
const byName = (c: Counted, per: number): string => [...c.byName].sort((a, b) => b[1] - a[1]).map(([n, k]) => `${n.replaceAll('|', '\\|')} ${num(k / per, 2)}`).join(', ')

export function renderKeepAlive (b: KeepAliveBench): string {
  const idle = b.idle.commands
  const r = b.renewal
  const per = r.counted
  return [
    '### Keep-alive schedule (npm run bench:keepalive)',
    '',
    runLine(b.date, b.machine, b.load[0], b.load[1]),
    '',
    `| ${num(b.total)} merchants in the keep-alive schedule | |`,
    '| --- | --- |',
    `| schedule (one sorted set) | ${num(b.idleEntries)} entries not due + ${num(b.due)} due; ${num(b.scheduleBytes / 2 ** 20, 1)} MiB for the ${num(b.idleEntries)} (MEMORY USAGE, ${num(b.scheduleBytes / b.idleEntries)} B per merchant) |`,
    `| **idle tick** (none due): Redis commands per tick | **${num(idle.sent / b.idleTicks, 2)} sent + ${num(idle.inScripts / b.idleTicks, 2)} run inside its script** (${byName(idle, b.idleTicks)}), over ${num(b.idleTicks)} ticks |`,
    `| **idle tick**: time per tick, p50 / p90 / p99 | **${spread(b.idle.times)}** (${num(b.idleTicks)} ticks) |`,
    `| 1 % due (${num(b.due)}): the claim, p50 / p90 / p99 | ${spread(r.claims)} (${num(r.claims.length)} claims, up to 4 merchants each) |`,
    `| 1 % due: a tick (claim + its 4 renewals), p50 / p90 / p99 | ${spread(r.ticks)} |`,
    `| **1 % due: renewals/s** (one replica, 4 at a time) | **${num(r.renewed / r.seconds)}** (${num(r.renewed)} renewed in ${num(r.seconds, 2)} s; the simulator on loopback answers the refreshes) |`,
    `| **Redis commands per renewal** | **${num(r.commands.sent / per, 1)} sent + ${num(r.commands.inScripts / per, 1)} run inside scripts** (${byName(r.commands, per)}) |`,
    `| check | ${num(b.leftDue)} left due afterwards; ${num(b.refreshes)} refreshes at the simulator (${num(2 * b.due)} expected) |`,
    '',
    'How it ran:',
    '',
    '- A private redis-server (no persistence), the CyberSource simulator in the runner\'s process over HTTP on loopback, ' +
    'and the service\'s own parts in the runner\'s process: the token store wrapped by the keep-alive schedule, the token ' +
    'service (lock, refresh, compare-and-set write) and the keep-alive (`src/keep-alive.ts`), its ticks called one after ' +
    'the other (no timer between them).',
    `- **The ${num(b.idleEntries)} merchants that are not due are schedule entries only** (ZADD, due in 1 to 301 days), not ` +
    `stored records. For a tick that is the same work as ${num(b.total)} stored merchants: the claim is one script that reads the ` +
    'sorted set by score up to now (ZRANGEBYSCORE … LIMIT), which costs the same whatever the members are, and a merchant\'s ' +
    `record is read only after its entry is due and claimed. Writing ${num(b.total)} encrypted records would change no figure here ` +
    '(`npm run bench:scale` measures them). ' +
    `The ${num(b.due)} due merchants are real: onboarded at the simulator and stored through the wrapped token store, their ` +
    'refresh tokens inside the 30-day margin.',
    '- Commands are counted with MONITOR (sent by the service, or run inside Redis by its scripts); times are taken in a ' +
    'second pass without MONITOR, which slows Redis down. The 1 % case runs twice, with fresh due merchants each time: ' +
    'counted, then timed.',
    '- Times and rates depend on the machine and its load; command counts do not.'
  ].join('\n') + '\n'
}
