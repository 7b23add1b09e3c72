// The benchmark's child processes: the servers under test (pinned to their core, under callgrind
// when instructions are counted), paused and resumed for their turns, and the private
// redis-server; a child that dies while it is needed fails the run, and none outlives it.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { closeSync, openSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { underCallgrind, CALLGRIND_ENV } from './callgrind.js'
import { waitForPort } from '../src/net-utils.js'
import { RedisServerError, startRedisServer, type RedisServer } from '../src/redis-server.js'
import { BenchError, OUT, ROOT, type Settings } from './settings.js'

export interface Child { name: string, proc: ChildProcess, exited: Promise<void>, stderrFile: string, stopping: boolean }

// Pinning (settings.pin): every server under test on core 0, autocannon (this process, all its
// threads) on core 1, so that the client and the server never compete for a core and the
// scheduler does not move them between rounds; redis-server is left unpinned.
export const SERVER_CORE = '0'
export const CLIENT_CORE = '1'

export const callgrindFile = (name: string): string => join(OUT, `callgrind.${name}.out`)

export interface Children {
  /**
   * Starts a server under test (pinned, under callgrind once `countFromNow` was called) and waits
   * until it listens on `port`; its stdout goes to `stdoutFile`, appended to when a server of the
   * same name ran before (BENCH_RESTART).
   */
  start: (name: string, command: string, args: string[], port: number, env: NodeJS.ProcessEnv, stdoutFile?: string) => Promise<Child>
  /** SIGTERM, then SIGKILL after the grace period. */
  stop: (c: Child) => Promise<void>
  /** Stops every server (cleanup): from now on, no exit fails the run. */
  stopAll: () => Promise<void>
  /** Fails the run when `alive` turns false before stopAll (a process this module did not start). */
  watch: (name: string, alive: () => boolean) => void
  pause: (c: Child) => void
  resume: (c: Child) => void
  /** Pins this process (autocannon) to its core; children started afterwards inherit it. */
  pinClient: () => void
  /** From now on, servers under test start under callgrind (BENCH_MODE=instructions). */
  countFromNow: () => void
  /** Rejects when a child dies while the benchmark still needs it. */
  died: Promise<never>
}

export function createChildren (settings: Settings): Children {
  const children: Child[] = []
  let stopping = false
  let counting = false
  /** Log files opened so far: a restarted server appends to the log of its predecessors. */
  const opened = new Set<string>()
  let fail: (err: Error) => void = () => {}
  const died = new Promise<never>((_resolve, reject) => { fail = reject })
  died.catch(() => {})

  function spawnChild (name: string, command: string, args: string[], env: NodeJS.ProcessEnv, stdoutFile?: string): Child {
    if (counting) {
      const out = callgrindFile(name)
      for (const stale of [out, `${out}.1`]) rmSync(stale, { force: true })
      ;[command, args] = underCallgrind(out, command, args)
      env = { ...env, ...CALLGRIND_ENV }
    }
    const stderrFile = join(OUT, `${name}.stderr.log`)
    const errFd = openSync(stderrFile, 'w')
    const outFd = stdoutFile === undefined ? 'ignore' : openSync(stdoutFile, opened.has(stdoutFile) ? 'a' : 'w')
    if (stdoutFile !== undefined) opened.add(stdoutFile)
    // taskset execs the command: the child's pid (and its /proc CPU times) stay the server's.
    const [file, argv] = settings.pin ? ['taskset', ['-c', SERVER_CORE, command, ...args]] : [command, args]
    const proc = spawn(file, argv, { env, stdio: ['ignore', outFd, errFd], cwd: ROOT })
    closeSync(errFd)
    if (typeof outFd === 'number') closeSync(outFd)
    const exited = new Promise<void>(resolve => proc.once('exit', () => resolve()))
    const child: Child = { name, proc, exited, stderrFile, stopping: false }
    proc.once('error', err => fail(new BenchError(`${name}: cannot start ${command}: ${err.message}`)))
    proc.once('exit', (code, signal) => {
      if (!stopping && !child.stopping) fail(new BenchError(`${name} exited during the benchmark (${signal ?? `status ${String(code)}`}); see ${stderrFile}`))
    })
    children.push(child)
    return child
  }

  async function stop (c: Child): Promise<void> {
    c.stopping = true
    if (!alive(c)) return
    c.proc.kill('SIGTERM')
    c.proc.kill('SIGCONT') // one paused (turn) handles its SIGTERM once continued
    const timer = setTimeout(() => { if (alive(c)) c.proc.kill('SIGKILL') }, settings.stopGraceMs)
    await c.exited
    clearTimeout(timer)
  }

  // Last resort (an exception past the cleanup, process.exit): nothing outlives the runner.
  process.once('exit', () => { for (const c of children) if (alive(c)) c.proc.kill('SIGKILL') })

  return {
    async start (name, command, args, port, env, stdoutFile) {
      const child = spawnChild(name, command, args, env, stdoutFile)
      await Promise.race([waitForPort(port, true, { timeoutMs: settings.startMs }), died])
      return child
    },
    stop,
    async stopAll () {
      stopping = true
      await Promise.allSettled(children.map(stop))
    },
    watch (name, isAlive) {
      const timer = setInterval(() => {
        if (stopping || isAlive()) return
        clearInterval(timer)
        fail(new BenchError(`${name} exited during the benchmark`))
      }, 500)
      timer.unref()
    },
    pause: c => { c.proc.kill('SIGSTOP') },
    resume: c => { c.proc.kill('SIGCONT') },
    pinClient () {
      if (!settings.pin) return
      if (spawnSync('taskset', ['-a', '-p', '-c', CLIENT_CORE, String(process.pid)], { stdio: 'ignore' }).status !== 0) {
        throw new BenchError(`BENCH_PIN: taskset could not pin the benchmark to core ${CLIENT_CORE} (BENCH_PIN=0 runs unpinned)`)
      }
    },
    countFromNow: () => { counting = true },
    died
  }
}

const alive = (c: Child): boolean => c.proc.exitCode === null && c.proc.signalCode === null

/** The private redis-server (src/redis-server.ts): no persistence, and its death fails the run. */
export async function startRedis (children: Children): Promise<RedisServer> {
  try {
    const redis = await startRedisServer({ label: 'bench-redis', args: ['--save', '', '--appendonly', 'no'] })
    children.watch('redis-server', redis.alive)
    return redis
  } catch (err) {
    throw err instanceof RedisServerError ? new BenchError(err.message) : err
  }
}

const CLOCK_TICKS = 100 // USER_HZ, the unit of the times in /proc/<pid>/stat

/** CPU time (user + system, ms, all threads) a child has used so far; NaN without /proc. */
export function cpuMs (c: Child): number {
  try {
    // The fields after the command name, which is in parentheses and may hold spaces.
    const stat = readFileSync(`/proc/${c.proc.pid ?? 0}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) * 1000 / CLOCK_TICKS
  } catch {
    return NaN
  }
}
