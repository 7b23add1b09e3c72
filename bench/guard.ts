// How every benchmark entry point runs: its work raced against a child process dying, a signal and
// a deadline, then a cleanup that is itself bounded, then the exit status (0, or 1 with one line
// on stderr saying why).
import { BenchError } from './settings.js'

export interface GuardOptions {
  /** The prefix of the failure line, e.g. `bench:scale`. */
  name: string
  deadlineMs: number
  /** After this, a cleanup that hangs is abandoned and the process exits 1. */
  cleanupMs: number
  /** Rejects when a child process the run needs died. */
  died?: Promise<never>
  cleanup: () => Promise<void>
}

/** The one line a failed run prints: a BenchError's message, else the stack. */
export const failLine = (name: string, err: unknown): string =>
  `${name}: ${err instanceof BenchError ? err.message : (err as Error).stack ?? String(err)}\n`

export async function runGuarded (main: () => Promise<void>, opts: GuardOptions): Promise<never> {
  let interrupt: (err: Error) => void = () => {}
  const interrupted = new Promise<never>((_resolve, reject) => { interrupt = reject })
  interrupted.catch(() => {})
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => interrupt(new BenchError(`${signal}: stopping`)))
  const deadline = setTimeout(() => interrupt(new BenchError(`the run took longer than ${opts.deadlineMs / 1000} s`)), opts.deadlineMs)
  let status = 0
  try {
    await Promise.race([main(), ...(opts.died === undefined ? [] : [opts.died]), interrupted])
  } catch (err) {
    status = 1
    process.stderr.write(failLine(opts.name, err))
  } finally {
    clearTimeout(deadline)
    const forced = setTimeout(() => {
      process.stderr.write(`${opts.name}: cleanup timed out; killing what is left\n`)
      process.exit(1)
    }, opts.cleanupMs)
    await opts.cleanup()
    clearTimeout(forced)
  }
  process.exit(status)
}
