// Every Redis key and channel the service uses, in one place, under REDIS_KEY_PREFIX.
// Per-merchant keys share the hash tag {merchantId} so multi-key scripts work on Cluster.
import { createHash } from 'node:crypto'

export interface RedisKeys {
  prefix: string
  merchant: (merchantId: string) => string
  /** The merchant's encrypted tokens (one binary string, in the record's slot). */
  merchantTokens: (merchantId: string) => string
  /**
   * Merchants per status: one hash off Cluster (no tag); on Cluster one per slot, under a tag
   * that hashes to that slot (src/merchant-counts.ts).
   */
  merchantCounts: (slotTag?: string) => string
  lock: (merchantId: string) => string
  /**
   * States are stored under their SHA-256, so a Redis dump holds no usable state value. A used
   * state's outcome (for a reload by the same browser) shares its hash tag.
   */
  state: (state: string) => string
  stateOutcome: (state: string) => string
  /** Onboarding links made through the internal API. */
  link: (id: string) => string
  /** Counters of onboarding states started per client and in total (prefix; the rest is the bucket). */
  stateQuota: string
  /** SCAN pattern of merchant records, and the inverse of merchant(). */
  merchantPattern: string
  merchantIdOf: (key: string) => string | undefined
  /** Pub/sub channel announcing record changes (payload: merchant id). */
  events: string
  rateLimit: string
  /**
   * The lifecycle events and the keys that go with them (webhook deliveries): one hash tag, so
   * that appending an event and queuing its delivery is one atomic step, on Cluster too.
   */
  eventStream: string
  /** Keys beside the event stream in its slot (e.g. eventKey('webhook-due')). */
  eventKey: (name: string) => string
  /** The keep-alive schedule and the keys that go with it, in one slot. */
  keepAliveKey: (name: string) => string
}

const sha256 = (s: string): string => createHash('sha256').update(s).digest('base64url')

export function createRedisKeys (prefix: string): RedisKeys {
  const merchantHead = `${prefix}merchant:{`
  return {
    prefix,
    merchant: (id) => `${merchantHead}${id}}`,
    merchantTokens: (id) => `${merchantHead}${id}}:tokens`,
    merchantCounts: (tag) => tag === undefined ? `${prefix}merchant-counts` : `${prefix}merchant-counts:{${tag}}`,
    lock: (id) => `${prefix}lock:{${id}}`,
    state: (state) => `${prefix}state:{${sha256(state)}}`,
    stateOutcome: (state) => `${prefix}state-outcome:{${sha256(state)}}`,
    link: (id) => `${prefix}link:{${id}}`,
    stateQuota: `${prefix}state-quota:`,
    merchantPattern: `${merchantHead}*}`,
    merchantIdOf: (key) => key.startsWith(merchantHead) && key.endsWith('}') ? key.slice(merchantHead.length, -1) : undefined,
    events: `${prefix}events`,
    rateLimit: `${prefix}rate:`,
    eventStream: `${prefix}{events}:stream`,
    eventKey: (name) => `${prefix}{events}:${name}`,
    keepAliveKey: (name) => `${prefix}{keepalive}:${name}`
  }
}
