// NAME_FILE for the secret variables: the value is read from the file at that path, the
// way Docker and Kubernetes mount secrets, so the secret itself never sits in the environment.
import { closeSync, openSync, readSync } from 'node:fs'
import type { Problems } from './config-parsers.js'

type Env = Record<string, string | undefined>

const MAX_BYTES = 64 * 1024

export interface ResolvedSecrets {
  /** The environment with each NAME taken from its NAME_FILE. */
  env: Env
  problems: Problems
  /** Secret names whose NAME_FILE could not be used; the schema's lines about them are redundant. */
  failed: Set<string>
}

/** The file's bytes, or undefined past `max`; reads rather than stats so a pipe (`<(…)`) works too. */
function readAtMost (path: string, max: number): Buffer | undefined {
  const fd = openSync(path, 'r')
  try {
    const buf = Buffer.alloc(max + 1)
    let length = 0
    while (length < buf.length) {
      const n = readSync(fd, buf, length, buf.length - length, null)
      if (n === 0) break
      length += n
    }
    return length > max ? undefined : buf.subarray(0, length)
  } finally {
    closeSync(fd)
  }
}

export function resolveSecretFiles (env: Env, names: readonly string[]): ResolvedSecrets {
  const resolved: Env = { ...env }
  const problems: Problems = []
  const failed = new Set<string>()
  for (const name of names) {
    const fileVar = `${name}_FILE`
    const path = env[fileVar]
    if (path === undefined) continue
    const fail = (line: string): void => {
      problems.push(line)
      failed.add(name)
      resolved[name] = undefined
    }
    // An empty NAME counts as unset: compose's `NAME: ${NAME}` yields one when .env lacks it.
    if (env[name] !== undefined && env[name] !== '') {
      fail(`${name}: both ${name} and ${fileVar} are set; give one`)
      continue
    }
    if (path === '') {
      fail(`${fileVar}: must be the path of a file holding ${name}`)
      continue
    }
    let content: Buffer | undefined
    try {
      content = readAtMost(path, MAX_BYTES)
    } catch (err) {
      // The path is not printed: a secret written into NAME_FILE by mistake would be.
      fail(`${fileVar}: cannot read file (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
      continue
    }
    if (content === undefined) {
      fail(`${fileVar}: the file is larger than ${MAX_BYTES / 1024} KiB`)
      continue
    }
    const value = content.toString('utf8').replace(/\r?\n$/, '')
    if (value === '') fail(`${fileVar}: the file is empty`)
    else resolved[name] = value
  }
  return { env: resolved, problems, failed }
}
