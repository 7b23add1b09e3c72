// The simulator's memory across restarts: the refresh tokens it issued and still honours, kept
// in a JSON file (as SHA-256 digests, never the tokens themselves). Written behind the requests,
// atomically (temporary file, fsync, rename), and once more when the simulator closes.
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { mkdir, open, rename, rm } from 'node:fs/promises'
import { dirname } from 'node:path'
import { ID_PATTERN } from '../config.js'

export interface RefreshGrant { clientId: string, merchantId: string, expiresAt: number }

export interface StateFileOptions {
  /** Called with a one-line message when the file cannot be read or written. */
  warn: (message: string) => void
  now: () => number
  /** How long a change waits for others before the file is written. */
  debounceMs?: number
}

export interface StateFile {
  /** The live map of digest → grant, loaded from the file: mutate it, then call changed(). */
  grants: Map<string, RefreshGrant>
  changed: () => void
  /** Writes pending changes now; resolves once they are on disk. */
  flush: () => Promise<void>
}

const VERSION = 1
const DIGEST = /^[A-Za-z0-9_-]{43}$/

/** The key a refresh token is remembered by. */
export const tokenDigest = (token: string): string => createHash('sha256').update(token).digest('base64url')

function parse (text: string): Map<string, RefreshGrant> | undefined {
  let doc: unknown
  try { doc = JSON.parse(text) } catch { return undefined }
  const d = doc as { version?: unknown, refresh_tokens?: unknown }
  if (typeof d !== 'object' || d === null || d.version !== VERSION) return undefined
  if (typeof d.refresh_tokens !== 'object' || d.refresh_tokens === null || Array.isArray(d.refresh_tokens)) return undefined
  const grants = new Map<string, RefreshGrant>()
  for (const [digest, raw] of Object.entries(d.refresh_tokens as Record<string, unknown>)) {
    const g = raw as { client_id?: unknown, merchant_id?: unknown, expires_at?: unknown } | null
    if (!DIGEST.test(digest) || typeof g !== 'object' || g === null) return undefined
    if (typeof g.client_id !== 'string' || typeof g.merchant_id !== 'string' || !ID_PATTERN.test(g.merchant_id) ||
        typeof g.expires_at !== 'number' || !Number.isFinite(g.expires_at)) return undefined
    grants.set(digest, { clientId: g.client_id, merchantId: g.merchant_id, expiresAt: g.expires_at })
  }
  return grants
}

function load (path: string, warn: (m: string) => void): Map<string, RefreshGrant> {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    warn(code === 'ENOENT'
      ? `state file ${path} does not exist yet; starting with no refresh tokens`
      : `cannot read state file ${path} (${code ?? 'error'}); starting with no refresh tokens`)
    return new Map()
  }
  const grants = parse(text)
  if (grants !== undefined) return grants
  warn(`state file ${path} is corrupt; starting with no refresh tokens (it is replaced at the next change)`)
  return new Map()
}

let tmpCounter = 0

export function openStateFile (path: string, opts: StateFileOptions): StateFile {
  const grants = load(path, opts.warn)
  const debounceMs = opts.debounceMs ?? 200
  let dirty = false
  let timer: NodeJS.Timeout | undefined
  let queue: Promise<void> = Promise.resolve()

  function serialize (): string {
    const t = opts.now()
    const out: Record<string, unknown> = {}
    for (const [digest, g] of grants) {
      if (g.expiresAt > t) out[digest] = { client_id: g.clientId, merchant_id: g.merchantId, expires_at: g.expiresAt }
    }
    return JSON.stringify({ version: VERSION, note: 'CyberSource simulator state (development only)', refresh_tokens: out }) + '\n'
  }

  async function write (): Promise<void> {
    dirty = false
    const tmp = `${path}.${process.pid}.${++tmpCounter}.tmp`
    try {
      await mkdir(dirname(path), { recursive: true })
      const handle = await open(tmp, 'w', 0o600)
      try {
        await handle.writeFile(serialize())
        await handle.sync()
      } finally {
        await handle.close()
      }
      await rename(tmp, path)
    } catch (err) {
      dirty = true // tried again at the next change or flush
      await rm(tmp, { force: true }).catch(() => {})
      opts.warn(`cannot write state file ${path} (${(err as NodeJS.ErrnoException).code ?? String(err)})`)
    }
  }

  // One write at a time, in order; changes made during a write are written by the next one.
  async function drain (): Promise<void> {
    queue = queue.then(async () => { if (dirty) await write() })
    await queue
  }

  return {
    grants,
    changed () {
      dirty = true
      if (timer !== undefined) return
      timer = setTimeout(() => {
        timer = undefined
        drain().catch(() => {})
      }, debounceMs)
      timer.unref()
    },
    async flush () {
      if (timer !== undefined) {
        clearTimeout(timer)
        timer = undefined
      }
      await drain()
    }
  }
}
