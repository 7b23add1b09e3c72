// Onboarding `state` values: 256 random bits, stored with STATE_TTL_SECONDS, consumed exactly once,
// each bound to the browser that started it (the SHA-256 of its binding cookie). Consuming a state
// leaves its outcome under the same hash tag for the rest of the state's life, so the browser that
// used it can reload the callback and see the same answer.
import { createHash, randomBytes } from 'node:crypto'
import type { Redis, Cluster } from 'ioredis'
import type { RedisKeys } from './redis-keys.js'
import { storageCall } from './storage-errors.js'

export interface StateRecord {
  merchantId?: string
  createdAt: number
  /** SHA-256 (base64url) of the starting browser's binding value. */
  binding?: string
  /** The onboarding link the state was started from. */
  linkId?: string
}

/** What became of a used state: pending while its code is being exchanged. */
export interface StoredOutcome<T> { binding?: string, outcome?: T }

export type ConsumeResult =
  | { kind: 'consumed', record: StateRecord, bindingMatched: boolean }
  | { kind: 'browser_mismatch' }
  /** No such state: never issued, expired in Redis, or used (its outcome may be kept). */
  | { kind: 'unknown' }
  /** Older than the TTL by this process's clock: used up, with no outcome to replay. */
  | { kind: 'expired' }

export interface StateStore {
  create: (opts: { merchantId?: string, binding?: string, linkId?: string }) => Promise<{ state: string, expiresAt: Date }>
  /**
   * Atomically checks the browser and deletes: of concurrent callers with one state, exactly one
   * gets it. With `enforce`, a browser whose binding differs gets browser_mismatch and the state
   * stays. The state's outcome is marked pending in the same step.
   */
  consume: (state: string, binding: string | undefined, enforce: boolean) => Promise<ConsumeResult>
  /** Stores the outcome of a consumed state (until the state would have expired). */
  settle: (state: string, outcome: unknown) => Promise<void>
  /** The outcome of a consumed state, while the state would still be alive. */
  outcome: <T>(state: string) => Promise<StoredOutcome<T> | undefined>
}

const STATE_PATTERN = /^[A-Za-z0-9_-]{43}$/

export const hashBinding = (value: string): string => createHash('sha256').update(value).digest('base64url')

// KEYS: state, outcome. ARGV: binding hash ('' when the browser sent none), enforce ('1'/'0').
// The outcome key lives as long as the state had left.
const CONSUME = `
local raw = redis.call('GET', KEYS[1])
if not raw then return {'unknown'} end
local ok, record = pcall(cjson.decode, raw)
local bound = ok and type(record) == 'table' and record.binding or nil
local matched = bound ~= nil and bound == ARGV[1]
if bound ~= nil and not matched and ARGV[2] == '1' then return {'browser_mismatch'} end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
if ttl > 0 then redis.call('SET', KEYS[2], cjson.encode({ binding = bound or '' }), 'PX', ttl) end
return {'consumed', raw, matched and '1' or '0'}
`

// KEYS: outcome. ARGV: the outcome as JSON. Only while the pending marker lives.
const SETTLE = `
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local entry = cjson.decode(raw)
entry.outcome = cjson.decode(ARGV[1])
redis.call('SET', KEYS[1], cjson.encode(entry), 'KEEPTTL')
return 1
`

type Scripted = (Redis | Cluster) & {
  consumeState: (state: string, outcome: string, binding: string, enforce: string) => Promise<[string, string?, string?]>
  settleState: (outcome: string, value: string) => Promise<number>
}

export function createStateStore (redis: Redis | Cluster, keys: RedisKeys, opts: { ttlSeconds: number, now?: () => number }): StateStore {
  const now = opts.now ?? Date.now
  if (typeof (redis as unknown as Partial<Scripted>).consumeState !== 'function') {
    redis.defineCommand('consumeState', { numberOfKeys: 2, lua: CONSUME })
    redis.defineCommand('settleState', { numberOfKeys: 1, lua: SETTLE })
  }
  const scripted = redis as unknown as Scripted
  return {
    async create ({ merchantId, binding, linkId }) {
      const state = randomBytes(32).toString('base64url')
      const createdAt = now()
      const record: StateRecord = { createdAt, merchantId, binding, linkId }
      await storageCall(async () => await redis.set(keys.state(state), JSON.stringify(record), 'EX', opts.ttlSeconds, 'NX'))
      return { state, expiresAt: new Date(createdAt + opts.ttlSeconds * 1000) }
    },

    async consume (state, binding, enforce) {
      if (!STATE_PATTERN.test(state)) return { kind: 'unknown' }
      const [kind, raw, matched] = await storageCall(async () =>
        await scripted.consumeState(keys.state(state), keys.stateOutcome(state), binding ?? '', enforce ? '1' : '0'))
      if (kind === 'browser_mismatch') return { kind }
      if (kind !== 'consumed' || raw === undefined) return { kind: 'unknown' }
      const record = JSON.parse(raw) as StateRecord
      // Redis expiry is the bound; this guards a clock or TTL mishap all the same.
      if (now() - record.createdAt > opts.ttlSeconds * 1000) {
        await storageCall(async () => await redis.del(keys.stateOutcome(state)))
        return { kind: 'expired' }
      }
      return { kind: 'consumed', record, bindingMatched: matched === '1' }
    },

    async settle (state, outcome) {
      await storageCall(async () => await scripted.settleState(keys.stateOutcome(state), JSON.stringify(outcome)))
    },

    async outcome<T> (state: string) {
      if (!STATE_PATTERN.test(state)) return undefined
      const raw = await storageCall(async () => await redis.get(keys.stateOutcome(state)))
      if (raw === null) return undefined
      const entry = JSON.parse(raw) as { binding: string, outcome?: T }
      return { binding: entry.binding === '' ? undefined : entry.binding, outcome: entry.outcome }
    }
  }
}
