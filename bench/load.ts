// The load: autocannon against one target at a time, for a few rounds. The broker and the static
// route (and the builds compared) form one unit, loaded in turns of BENCH_SLICE seconds while the
// others of the unit are paused; each target yields req/s, latency and the server's CPU per
// request, or with BENCH_MODE=instructions, callgrind's counts of the median window.
import autocannon, { type Instance, type Result } from 'autocannon'
import { dumpCounts, medianWindow, startCounting, steadyCount, type Counts } from './callgrind.js'
import { callgrindFile, cpuMs, type Child, type Children } from './children.js'
import { median, perRequest } from './numbers.js'
import { BenchError, type Settings } from './settings.js'

export interface Target {
  name: string
  label: string
  url: string
  /** The server process now running; `start` replaces it (BENCH_RESTART). */
  child: Child
  start: () => Promise<Child>
  logFile?: string
  /** Lookups it answered so far, set-up included: what its audit trail must hold. */
  served: number
}

export interface Sample {
  rps: number
  p50: number
  p99: number
  cpuUs: number
  /** Server CPU per request at the fixed rate (BENCH_FIXED_RPS), NaN when skipped. */
  cpuAtRateUs: number
}

export interface Measurements {
  /** BENCH_MODE=time: one sample per target and round. */
  samples: Map<string, Sample[]>
  /** BENCH_MODE=instructions: each target's median window, and all its windows. */
  counts: Map<string, Counts>
  windows: Map<string, Counts[]>
}

export interface Loader {
  measure: (loaded: Target[], authorization: string) => Promise<Measurements>
  /** Stops the load under way, if any (cleanup). */
  stop: () => void
}

export function createLoader (settings: Settings, children: Children): Loader {
  let running: Instance | undefined

  return { measure, stop: () => running?.stop() }

  async function measure (loaded: Target[], authorization: string): Promise<Measurements> {
    const m: Measurements = { samples: new Map(loaded.map(t => [t.name, []])), counts: new Map(), windows: new Map() }

    /** Loads a target for `duration` seconds, or until it answered `amount` requests. */
    const load = async (target: Target, size: { duration: number, overallRate?: number } | { amount: number }): Promise<Result> => {
      const instance = autocannon({
        url: target.url,
        connections: settings.connections,
        pipelining: settings.pipelining,
        headers: { authorization },
        // Under callgrind a server is much slower: autocannon's 10 s would time out.
        ...(settings.instructions ? { timeout: 120 } : {}),
        ...size
      })
      running = instance
      try {
        const result = await Promise.race([instance, children.died])
        const bad = result.errors + result.timeouts + result.non2xx
        if (bad > 0) throw new BenchError(`${target.name}: ${result.errors} errors, ${result.timeouts} timeouts, ${result.non2xx} non-2xx answers`)
        target.served += result['2xx']
        return result
      } finally {
        running = undefined
      }
    }

    /**
     * Only the target being loaded runs: the others of its unit are paused (SIGSTOP), so that the
     * background work a server leaves behind (garbage collection, compilation, timers) is done in
     * its own turn and not on the core of the one loaded (all servers share core 0). So it is
     * when instructions are counted: a server that shares its core answers fewer requests per
     * event-loop turn.
     */
    const turn = (unit: Target[], t: Target): void => {
      for (const other of unit) if (other !== t) children.pause(other.child)
      children.resume(t.child)
    }
    const resumeAll = (unit: Target[]): void => { for (const t of unit) children.resume(t.child) }

    /**
     * Warm, then count windows of BENCH_INSTR_COUNT requests and keep the median one: a major
     * garbage collection adds much to the window it falls into, which decided a single count.
     */
    const countInstructions = async (t: Target): Promise<void> => {
      const pid = t.child.proc.pid ?? 0
      const per = (w: Counts): string => perRequest(steadyCount(w), settings.instrCount)
      if (settings.instrWarmup > 0) await load(t, { amount: settings.instrWarmup })
      startCounting(pid)
      const counted: Counts[] = []
      for (let part = 1; part <= settings.instrWindows; part++) {
        await load(t, { amount: settings.instrCount })
        counted.push(dumpCounts(pid, callgrindFile(t.name), part))
      }
      await children.stop(t.child)
      const c = medianWindow(counted)
      m.counts.set(t.name, c)
      m.windows.set(t.name, counted)
      process.stderr.write(`${t.name.padEnd(8)} ${per(c).padStart(9)} instructions per request (windows: ${counted.map(per).join(' / ')}), ${perRequest(c.compiler, settings.instrCount)} more in the optimizing compilers\n`)
    }

    /** One round of a unit: warm-up, turns as fast as it goes, then the fixed rate, per target. */
    const timeUnit = async (unit: Target[], round: number): Promise<void> => {
      for (const t of unit) {
        turn(unit, t)
        if (settings.warmupS > 0) await load(t, { duration: settings.warmupS })
      }
      const acc = unit.map(t => ({ t, answers: 0, seconds: 0, cpuMs: 0, p50: [] as number[], p99: [] as number[] }))
      const turns = Math.ceil(settings.durationS / settings.sliceS)
      for (let i = 0; i < turns; i++) {
        // A B, B A, A B…: neither goes first more often.
        for (const a of i % 2 === 0 ? acc : [...acc].reverse()) {
          turn(unit, a.t)
          const cpuBefore = cpuMs(a.t.child)
          const r = await load(a.t, { duration: settings.sliceS })
          a.cpuMs += cpuMs(a.t.child) - cpuBefore
          a.answers += r['2xx']
          a.seconds += r.duration
          a.p50.push(r.latency.p50)
          a.p99.push(r.latency.p99)
        }
      }
      for (const { t, answers, seconds, cpuMs: busyMs, p50, p99 } of acc) {
        let cpuAtRateUs = NaN
        turn(unit, t)
        if (settings.fixedRps > 0) {
          const cpuBefore = cpuMs(t.child)
          const r = await load(t, { duration: settings.fixedS, overallRate: settings.fixedRps })
          cpuAtRateUs = (cpuMs(t.child) - cpuBefore) * 1000 / r['2xx']
        }
        const s: Sample = { rps: answers / seconds, p50: median(p50), p99: median(p99), cpuUs: busyMs * 1000 / answers, cpuAtRateUs }
        m.samples.get(t.name)?.push(s)
        process.stderr.write(`round ${round + 1}/${settings.rounds}  ${t.name.padEnd(8)} ${s.rps.toFixed(0).padStart(7)} req/s  p50 ${s.p50} ms  p99 ${s.p99} ms  server CPU ${s.cpuUs.toFixed(1)} µs/req, ${s.cpuAtRateUs.toFixed(1)} µs/req at ${settings.fixedRps} req/s\n`)
      }
      resumeAll(unit)
    }

    if (settings.instructions) children.countFromNow()
    const units = unitsOf(loaded, settings)
    for (let round = 0; round < settings.rounds; round++) {
      // Rotated order, so that no unit always runs first or after the same neighbour; within a
      // unit, the order alternates.
      const order = units.map((_, i) => units[(i + round) % units.length]).map(u => round % 2 === 1 ? [...u].reverse() : u)
      for (const unit of order) {
        // Every round starts fresh processes, the first one too: the processes started (and
        // checked) by the set-up were all started at once and served it, and measured slower
        // in round 1 than in any later round.
        if (settings.restart) {
          for (const t of unit) {
            await children.stop(t.child)
            t.child = await t.start()
          }
        }
        if (settings.instructions) {
          for (const t of unit) {
            turn(unit, t)
            await countInstructions(t)
          }
          resumeAll(unit)
          continue
        }
        await timeUnit(unit, round)
        if (settings.restart && round < settings.rounds - 1) for (const t of unit) await children.stop(t.child)
      }
    }
    return m
  }
}

/**
 * The broker and the static route (and builds to compare) form one unit: started together and
 * loaded in turns, so that each round's ratio compares loads that alternate within seconds (the
 * machine's speed drifts within a minute); the other targets are units of their own.
 */
function unitsOf (loaded: Target[], settings: Settings): Target[][] {
  const pairNames = ['broker', 'static', ...settings.compare.map(b => b.name)]
  const pair = loaded.filter(t => pairNames.includes(t.name))
  return [...(pair.length >= 2 ? [pair] : pair.map(t => [t])), ...loaded.filter(t => !pairNames.includes(t.name)).map(t => [t])]
}
