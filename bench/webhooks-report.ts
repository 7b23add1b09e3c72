// The webhook benchmark's subsection of bench/RESULTS.md (written by bench/webhooks.ts).
import { num } from './numbers.js'
import { runLine, type Machine } from './lifecycle-report.js'
import type { ReplicaSetup, Tally } from './webhooks-replica.js'
import { RETRY_DELAYS_MS } from '../src/webhook-delivery.js'

export interface Run {
  label: string
  replicas: number
  events: number
  /** Events per second appended while the replicas ran; undefined: all appended before they started. */
  paced: number | undefined
  failShare: number
  options: ReplicaSetup['options']
  appendS: number
  /** From the start of the replicas (or of the paced appends) to the last event's arrival. */
  seconds: number
  latencies: number[]
  commands: Map<string, number>
  delivered: number
  duplicates: number
  failed: number
  invalid: number
  tallies: Tally[]
  left: number
  dead: number
}

export interface WebhookBench { date: string, machine: Machine, load: [string, string], runs: Run[] }

const quantile = (xs: number[], q: number): number => xs.length === 0 ? NaN : [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))]
const ms = (n: number): string => `${num(n)} ms`
const SCRIPTS = new Set(['evalsha', 'eval', 'evalsha_ro', 'eval_ro', 'fcall'])
const total = (c: Map<string, number>, only?: (name: string) => boolean): number => [...c].filter(([k]) => only?.(k) ?? true).reduce((a, [, v]) => a + v, 0)
const cmdName = (c: string): string => c.replaceAll('|', '\\|')

function perEvent (r: Run): string {
  const all = total(r.commands) / r.events
  const sent = total(r.commands, k => SCRIPTS.has(k)) / r.events
  return `${num(sent, 2)} scripts; ${num(all, 1)} in all`
}

function attempts (r: Run): string {
  const sum = r.tallies.reduce((a, t) => a + t.attempts.success + t.attempts.http_error + t.attempts.timeout + t.attempts.network_error, 0)
  const other = r.tallies.reduce((a, t) => a + t.attempts.timeout + t.attempts.network_error, 0)
  return `${num(sum)} (${num(sum - r.events)} retries${r.failed > 0 ? `, ${num(r.failed)} answered 500` : ''}${other > 0 ? `, ${num(other)} timeouts or network errors` : ''})`
}

const once = (r: Run): string => r.delivered === r.events && r.duplicates === 0 && r.dead === 0 && r.left === 0
  ? 'yes'
  : `**no**: ${num(r.delivered)} of ${num(r.events)} delivered, ${num(r.duplicates)} duplicates, ${num(r.dead)} dead, ${num(r.left)} left`

const rate = (r: Run): string => r.paced === undefined ? `**${num(r.events / r.seconds)}**` : `${num(r.events / r.seconds)} (appended at ${num(r.paced)}/s)`

export function renderWebhooks (b: WebhookBench): string {
  const m = b.machine
  const shipped = b.runs.find(r => r.options.pollMs === undefined && r.paced === undefined)
  const fast = b.runs.filter(r => r.options.pollMs !== undefined && r.failShare === 0)
  const main = fast[0] ?? b.runs[0]
  const breakdown = [...main.commands].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${cmdName(k)} ${num(v / main.events, 2)}`).join(', ')
  const failRun = b.runs.find(r => r.failShare > 0)
  return [
    '### Webhook deliveries (npm run bench:webhooks)',
    '',
    runLine(b.date, m, b.load[0], b.load[1]),
    '',
    '| run | events | delivered events/s | append → arrival p50 / p99 | attempts | Redis commands per delivered event (INFO commandstats) | each event delivered exactly once |',
    '| --- | ---: | ---: | ---: | --- | --- | --- |',
    ...b.runs.map(r => `| ${r.label} | ${num(r.events)} | ${rate(r)} | ${ms(quantile(r.latencies, 0.5))} / ${ms(quantile(r.latencies, 0.99))} | ${attempts(r)} | ${perEvent(r)} | ${once(r)} |`),
    '',
    `Per delivered event (${main.label}), by command, a script's own commands included: ${breakdown}.`,
    '',
    ...(shipped === undefined || fast.length === 0
      ? []
      : [`**As shipped, a replica delivers about ${num(shipped.events / shipped.seconds)} events/s**, against ${num(main.events / main.seconds)}/s when its ` +
        'poll does not wait. The worker claims up to its 4 free slots and claims again as soon as a delivery ends while all ' +
        'were busy, so a backlog drains at the pace of the receiver; an idle replica looks for new events once per poll ' +
        'interval (1 s: the paced row). A burst of 1,000 events (1 % of 100,000 merchants refreshed by the keep-alive) takes about ' +
        `${num(1000 / (shipped.events / shipped.seconds), 1)} s per replica to deliver.`, '']),
    'How it ran:',
    '',
    '- A private redis-server (no persistence); a receiver in the runner\'s process (node:http on 127.0.0.1) that verifies each ' +
    'request\'s signature with `standardwebhooks` on the raw body, as `examples/webhook-receiver.ts` does, then answers 204. ' +
    'Each replica is a child process running the service\'s worker (`src/webhook-delivery.ts`) on its own Redis connection. ' +
    '"As shipped": the service\'s defaults (poll every 1 s, 4 deliveries at a time per replica, 10 s timeout, retries after ' +
    `${RETRY_DELAYS_MS.slice(0, 3).map(d => `${d / 1000} s`).join(', ')}, …). "Poll 1 ms": the poll interval shortened through the worker's options ` +
    '(the service does not expose it), everything else as shipped: what the delivery path itself (signing, HTTP on loopback, ' +
    'the claim and settle scripts) can carry.',
    '- Events (`merchant.refreshed`) are appended through the event log (`src/event-log.ts`, webhooks on, 100 per pipeline ' +
    `as the outbox does; ${num(main.events)} in ${num(main.appendS, 2)} s for "${main.label}"). In the backlog runs they are all appended before the ` +
    'replicas start, and the rate is events over the time from the start to the last arrival. In the paced run they are appended ' +
    'in 20 ms steps while the replica runs.',
    '- Append → arrival: Redis\'s clock when the event was appended (the first part of its stream id, in its webhook-id) to ' +
    'the receiver\'s clock once the signature verified, ms resolution, same machine. In the backlog runs it is mostly the wait ' +
    'in the backlog; the paced row is the latency of a replica that keeps up.',
    '- Redis commands: CONFIG RESETSTAT after the appends (the paced run counts its appends too), INFO commandstats once the ' +
    'last event arrived, the measurement\'s own left out, over the events: the scripts called (claim, settle) and every command ' +
    'Redis ran, those inside the scripts included. Idle polls count too (the retries\' waits in the failing run).',
    ...(failRun === undefined
      ? []
      : [`- The failing run: the receiver answers 500 to ${num(failRun.failShare * 100)} % of requests at random, retries included. ` +
        `**Retry delays shortened** through the worker's options to ${(failRun.options.retryDelaysMs ?? []).join(', ')} ms, so that ` +
        'the run does not wait minutes for its last retries. Exactly once: every event got one 2xx answer, none got two, none went dead.']),
    '- Times and rates depend on the machine and its load; command counts do not.'
  ].join('\n') + '\n'
}
