// A redis-server child process on a loopback port, for the dev runner (src/dev.ts), the test
// helpers (test/helpers/) and the benchmark (bench/):
//
//   const redis = await startRedisServer({ port?, host?, dir?, args?, config?, label? })
//   redis.port, redis.host, redis.url ('redis://127.0.0.1:6379'), redis.dir
//   await redis.stop(graceful?)  SIGTERM (Redis saves as its --save says) or SIGKILL; resolves once
//                                the port is closed; never throws
//   await redis.start()          starts it again on the same port, arguments and directory
//   await redis.close()          stop() for good, removing the temporary directory if it made one
//   redis.alive(), redis.output() (the tail of its log)
//
// Without `port` it takes a free one (another one when that was taken meanwhile); without `dir`, a
// temporary directory. Failures throw RedisServerError. The server dies with this process, even
// when this process dies without stopping it.
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Writable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { freePort, waitForPort } from './net-utils.js'

export interface RedisServerOptions {
  port?: number
  host?: string
  /** Data directory, kept; by default a temporary one. */
  dir?: string
  /** Further redis-server arguments (`--save`, `--cluster-enabled`…); the log must stay on stdout. */
  args?: string[]
  /** A configuration file's contents, written in `dir` and passed first (Sentinel rewrites its own). */
  config?: string
  /** Names the server in errors and in its temporary directory. */
  label?: string
}

export interface RedisServer {
  readonly port: number
  readonly host: string
  readonly url: string
  readonly dir: string
  start: () => Promise<void>
  stop: (graceful?: boolean) => Promise<void>
  close: () => Promise<void>
  alive: () => boolean
  output: () => string
}

export class RedisServerError extends Error {}

// $1: a directory to remove if this process dies, or ''; then the redis-server arguments. The sh
// becomes redis-server (exec), so signals reach Redis itself. A watcher reads a pipe from this
// process on fd 3: a line means "stand down", end of file means this process is gone, and then it
// kills the server.
const WRAPPER = `
dir="$1"; shift
( if ! read -r _ <&3; then kill -9 $$; [ -n "$dir" ] && rm -rf -- "$dir"; fi ) </dev/null >/dev/null 2>&1 &
exec redis-server "$@" 3<&-
`
const NOT_FOUND = 'redis-server is not on the PATH: install it (e.g. apt-get install redis-server, brew install redis) or set REDIS_URL to a running Redis'
const START_TIMEOUT_MS = 15_000
const SAVE_TIMEOUT_MS = 10_000

export async function startRedisServer (opts: RedisServerOptions = {}): Promise<RedisServer> {
  const host = opts.host ?? '127.0.0.1'
  const label = opts.label ?? 'redis-server'
  const ownDir = opts.dir === undefined
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), `cybs-${label}-`))
  mkdirSync(dir, { recursive: true })
  let port = opts.port ?? await freePort(host)
  let child: ChildProcess | undefined
  let exited = Promise.resolve()
  let log = ''

  const alive = (): boolean => child !== undefined && child.exitCode === null && child.signalCode === null

  const stop = async (graceful = false): Promise<void> => {
    const p = child
    if (p !== undefined && alive()) {
      p.kill(graceful ? 'SIGTERM' : 'SIGKILL')
      const timer = setTimeout(() => p.kill('SIGKILL'), SAVE_TIMEOUT_MS)
      await exited
      clearTimeout(timer)
      await waitForPort(port, false, { host, timeoutMs: 5000 }).catch(() => {})
    }
  }
  const close = async (): Promise<void> => {
    await stop()
    if (ownDir) rmSync(dir, { recursive: true, force: true })
  }

  /** Spawns the server on `port` and waits until it is bound; false when the port is taken. */
  const launch = async (): Promise<boolean> => {
    const args = ['--port', String(port), '--bind', host, '--dir', dir, ...(opts.args ?? [])]
    if (opts.config !== undefined) {
      args.unshift(join(dir, 'redis.conf'))
      writeFileSync(args[0], opts.config)
    }
    log = ''
    // Its own process group: a Ctrl-C in a terminal reaches the owner only, which stops Redis in turn.
    const p = spawn('/bin/sh', ['-c', WRAPPER, 'sh', ownDir ? dir : '', ...args], { stdio: ['ignore', 'pipe', 'pipe', 'pipe'], detached: true })
    child = p
    exited = new Promise(resolve => p.once('exit', () => resolve()))
    const closed = new Promise(resolve => p.once('close', resolve))
    const append = (chunk: Buffer): void => { log = (log + chunk.toString()).slice(-16_384) }
    const watcher = p.stdio[3] as Writable
    p.stdout?.on('data', append)
    p.stderr?.on('data', append)
    watcher.on('error', () => {})
    p.once('error', err => { log += `${err.message}\n` })
    p.once('exit', () => watcher.end('stand down\n'))

    // Logged only once the socket is bound (a bind failure aborts before), so a foreign process
    // on the port is never mistaken for this server.
    const bound = new RegExp(`Running mode=\\w+, port=${port}\\.`)
    const deadline = Date.now() + START_TIMEOUT_MS
    while (!bound.test(log)) {
      if (!alive() || Date.now() > deadline) {
        const hung = alive()
        await stop()
        await Promise.race([closed, sleep(1000)]) // the last of its output
        if (/Address already in use/.test(log)) return false
        if (p.exitCode === 127) throw new RedisServerError(NOT_FOUND)
        throw new RedisServerError(`${label} ${hung ? `did not start within ${START_TIMEOUT_MS / 1000} s` : 'exited at start'} (${host}:${port}):\n${log}`)
      }
      await sleep(20)
    }
    try {
      await waitForPort(port, true, { host, timeoutMs: 10_000 })
    } catch (err) {
      await stop()
      throw new RedisServerError(`${label} (${host}:${port}): ${(err as Error).message}`)
    }
    return true
  }

  try {
    for (let attempt = 1; !await launch(); attempt++) {
      if (opts.port !== undefined) throw new RedisServerError(`${label}: ${host}:${port} is already in use`)
      if (attempt === 5) throw new RedisServerError(`${label}: no free port after ${attempt} attempts`)
      port = await freePort(host)
    }
  } catch (err) {
    await close()
    throw err
  }

  const start = async (): Promise<void> => {
    if (alive()) return
    if (!await launch()) throw new RedisServerError(`${label}: ${host}:${port} is already in use`)
  }
  return { port, host, url: `redis://${host}:${port}`, dir, start, stop, close, alive, output: () => log }
}
