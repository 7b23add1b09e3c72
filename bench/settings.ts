// The benchmark's settings, read once from the environment (the knobs are listed in
// bench/README.md), and the error it reports as one line.
import { spawnSync } from 'node:child_process'
import { cpus } from 'node:os'
import { isAbsolute, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

export const ROOT = fileURLToPath(new URL('../..', import.meta.url))
export const OUT = join(ROOT, 'bench', 'out')

/** A failure the runner reports as `bench: <message>`, without a stack. */
export class BenchError extends Error {}

const MODES = ['time', 'instructions'] as const

export interface Settings {
  /** BENCH_MODE=instructions: counted under callgrind instead of timed. */
  instructions: boolean
  connections: number
  pipelining: number
  durationS: number
  sliceS: number
  warmupS: number
  rounds: number
  fixedRps: number
  /** Seconds of the fixed-rate measurement per target and round. */
  fixedS: number
  naive: boolean
  padBytes: number
  keepLogs: boolean
  restart: boolean
  pin: boolean
  only: string[] | undefined
  brokerNodeArgs: string[]
  compare: Array<{ name: string, script: string }>
  instrWarmup: number
  instrCount: number
  instrWindows: number
  /** The report's path. */
  results: string
  /** Start-up of a server under test (under callgrind: about a minute). */
  startMs: number
  stopGraceMs: number
  /** The whole run, start-up and shutdown included; past it the run fails and cleans up. */
  deadlineMs: number
}

export function readSettings (env: NodeJS.ProcessEnv = process.env): Settings {
  const int = (name: string, fallback: number, min = 0): number => {
    const v = Number(env[name] ?? fallback)
    if (!Number.isInteger(v) || v < min) throw new BenchError(`${name}: must be an integer >= ${min}`)
    return v
  }
  const list = (name: string): string[] | undefined => env[name]?.split(',').map(s => s.trim()).filter(s => s !== '')

  const mode = (env.BENCH_MODE ?? 'time') as typeof MODES[number]
  if (!MODES.includes(mode)) throw new BenchError(`BENCH_MODE: one of ${MODES.join(', ')}`)
  const instructions = mode === 'instructions'

  const compare = (list('BENCH_COMPARE') ?? []).map(item => {
    const sep = item.indexOf('=')
    const name = item.slice(0, sep)
    if (sep < 1 || !/^[a-z0-9_-]{1,16}$/.test(name)) throw new BenchError('BENCH_COMPARE: entries are label=path/to/dist/src/server.js, labels of 1-16 [a-z0-9_-]')
    const path = item.slice(sep + 1)
    return { name, script: isAbsolute(path) ? path : resolve(path) }
  })

  const durationS = int('BENCH_DURATION', 10, 1)
  const sliceS = int('BENCH_SLICE', 2, 1)
  const warmupS = int('BENCH_WARMUP', 3)
  const rounds = instructions ? 1 : int('BENCH_ROUNDS', 5, 1)
  const fixedS = Math.min(durationS, 5)
  const instrWarmup = int('BENCH_INSTR_WARMUP', 10_000)
  const instrCount = int('BENCH_INSTR_COUNT', 5000, 1)
  const instrWindows = int('BENCH_INSTR_WINDOWS', 3, 1)
  const targetCount = 4 + compare.length
  const startMs = instructions ? 600_000 : 15_000

  return {
    instructions,
    connections: int('BENCH_CONNECTIONS', 50, 1),
    pipelining: 1,
    durationS,
    sliceS,
    warmupS,
    rounds,
    fixedRps: int('BENCH_FIXED_RPS', 8000),
    fixedS,
    naive: env.BENCH_NAIVE !== '0',
    // Padding claim of the simulator's JWTs: ~1.5 KB access tokens.
    padBytes: int('BENCH_PAD_BYTES', 560),
    keepLogs: env.BENCH_KEEP_LOGS === '1',
    // A fresh server process per target and round: one process's speed depends on its JIT's
    // choices and memory layout, which more rounds against the same process do not average out.
    restart: instructions || env.BENCH_RESTART !== '0',
    pin: env.BENCH_PIN !== '0' && cpus().length >= 2 && spawnSync('taskset', ['-V']).status === 0,
    only: list('BENCH_ONLY'),
    brokerNodeArgs: list('BENCH_BROKER_NODE_ARGS')?.flatMap(a => a.split(' ')).filter(a => a !== '') ?? [],
    compare,
    instrWarmup,
    instrCount,
    instrWindows,
    results: env.BENCH_RESULTS ?? join(ROOT, 'bench', 'RESULTS.md'),
    startMs,
    stopGraceMs: instructions ? 60_000 : 5000,
    deadlineMs: instructions
      ? 120_000 + targetCount * (2 * startMs + (instrWarmup + instrCount * instrWindows) * 20)
      : 120_000 + rounds * targetCount * (Math.ceil(durationS / sliceS) * (sliceS + 1) + fixedS + warmupS + 5) * 1000
  }
}
