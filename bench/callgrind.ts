// Instruction counts of a server under valgrind's callgrind, for `npm run bench:instructions`
// (bench/run.ts, BENCH_MODE=instructions). Timings on a shared machine drift by more than the
// few per cent a change to the lookup makes; instruction counts are the same from run to run.
// The server starts with instrumentation off; after a warm-up, bench/load.ts turns it on, zeroes
// the counters, loads a known number of requests and dumps the counts, which are read here.
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'

/**
 * callgrind_control reaches a running callgrind through vgdb, which finds it by the user and host
 * names in the environment: the server and callgrind_control are given the same ones.
 */
export const CALLGRIND_ENV = { USER: 'bench', LOGNAME: 'bench', HOST: 'localhost' }

/**
 * The optimizing compilers' own work (TurboFan, Turboshaft, Maglev, mostly on background
 * threads): a warm server still compiles now and then, a one-off cost of its warm-up that the
 * counted window catches by chance. Left out of the steady-state count, reported apart.
 */
const COMPILER = /v8::internal::(compiler|maglev|turboshaft)::/

/** The tools of valgrind's that the PATH lacks (none when instructions can be counted). */
export function missingCallgrindTools (): string[] {
  // (callgrind_annotate --version prints its version to stderr and exits with 255.)
  return ['valgrind', 'callgrind_control', 'callgrind_annotate'].filter(c => {
    const r = spawnSync(c, ['--version'], { encoding: 'utf8' })
    return !`${r.stdout ?? ''}${r.stderr ?? ''}`.startsWith(`${c}-`)
  })
}

/** The command line that runs `command args` under callgrind, writing its dumps to outFile.N. */
export function underCallgrind (outFile: string, command: string, args: string[]): [string, string[]] {
  return ['valgrind', ['--tool=callgrind', '--instr-atstart=no', '--smc-check=all-non-file', `--callgrind-out-file=${outFile}`, command, ...args]]
}

function control (pid: number, option: string): void {
  const r = spawnSync('callgrind_control', [option, String(pid)], { env: { PATH: process.env.PATH, ...CALLGRIND_ENV }, encoding: 'utf8', timeout: 120_000 })
  if (r.status !== 0 || !r.stdout.includes('OK')) throw new Error(`callgrind_control ${option} ${pid}: ${(r.stdout + r.stderr).trim()}`)
}

/** Counts from here on: instrumentation on, counters zeroed. */
export function startCounting (pid: number): void {
  control(pid, '--instr=on')
  control(pid, '--zero')
}

export interface Counts {
  /** Every instruction of the process (all its threads) since startCounting. */
  total: number
  /** Those of the optimizing compilers (COMPILER). */
  compiler: number
}

/**
 * Dumps the counts since startCounting or the last dump (a dump zeroes the counters) and reads
 * them: the `part`-th dump of the process, written to outFile.part.
 */
export function dumpCounts (pid: number, outFile: string, part: number): Counts {
  control(pid, '--dump')
  const dump = `${outFile}.${part}`
  if (!existsSync(dump)) throw new Error(`callgrind wrote no ${dump}`)
  const r = spawnSync('callgrind_annotate', ['--threshold=100', dump], { encoding: 'utf8', maxBuffer: 256 * 1024 * 1024 })
  if (r.status !== 0) throw new Error(`callgrind_annotate ${dump}: ${r.stderr.trim()}`)
  let total = NaN
  let compiler = 0
  // "158,899,728 (100.0%)  PROGRAM TOTALS", then one line per function: "10,404,454 ( 6.55%)  file:function [object]"
  for (const line of r.stdout.split('\n')) {
    const m = /^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$/.exec(line)
    if (m === null) continue
    const n = Number(m[1].replaceAll(',', ''))
    if (m[2] === 'PROGRAM TOTALS') total = n
    else if (COMPILER.test(m[2])) compiler += n
  }
  if (Number.isNaN(total)) throw new Error(`callgrind_annotate ${dump}: no program totals`)
  return { total, compiler }
}

/** A count's instructions without the optimizing compilers' (a one-off of the warm-up). */
export const steadyCount = (c: Counts): number => c.total - c.compiler

/** The median window by steadyCount (of an even number, the lower of the two middle ones). */
export const medianWindow = (ws: Counts[]): Counts => [...ws].sort((a, b) => steadyCount(a) - steadyCount(b))[Math.floor((ws.length - 1) / 2)]
