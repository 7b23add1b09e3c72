// Keeps the token cache honest across losses of the change subscription. Change messages published
// while the subscriber is away are lost, so each loss starts a new epoch: once subscribed again,
// every entry not known current in this epoch is checked against Redis (version and grant, in
// chunks of pipelined reads) and dropped only if its record changed or is gone. A record read or
// written before the subscription was active (or across a loss) is vouched for by nobody: it is
// checked too, even when it arrives after the check began. Entries are served meanwhile.
import type { LRUCache } from 'lru-cache'
import type { RedisClient } from './redis-client.js'
import type { Expected } from './token-store.js'
import type { CachedToken, Ticket } from './token-cache.js'

/** The version and grant of each merchant's record, in the order asked (undefined: no record). */
export type ReadVersions = (merchantIds: string[]) => Promise<Array<Expected | undefined>>

export const REVALIDATION_CHUNK = 1000
const RETRY_MS = 1000

export interface Revalidation {
  ticket: () => Ticket
  /** Marks a just-remembered entry current, or queues it for a check when its ticket is stale. */
  vouch: (merchantId: string, entry: CachedToken, ticket: Ticket) => void
  /** Subscribes to `channel` and revalidates after every reconnect. */
  follow: (subscriber: RedisClient, channel: string, readVersions: ReadVersions) => Promise<void>
  stop: () => void
}

export function createRevalidation (lru: Pick<LRUCache<string, CachedToken>, 'keys' | 'peek' | 'delete'>): Revalidation {
  // `epoch` counts losses of the subscription; `live`: subscribed, and no loss since.
  let epoch = 0
  let live = false
  // Every entry needs a check (after a loss, and before the first subscription)…
  let everything = true
  // …or only these, remembered while live from reads that began before.
  const doubtful = new Set<string>()
  let read: ReadVersions | undefined
  let running = false
  let stopped = false
  let retry: NodeJS.Timeout | undefined

  function kick (): void {
    if (running || stopped || !live || read === undefined) return
    running = true
    check(read).catch(() => {})
  }

  async function check (readVersions: ReadVersions): Promise<void> {
    try {
      for (;;) {
        if (!live || stopped || (!everything && doubtful.size === 0)) return
        const e = epoch
        const ids = everything ? [...lru.keys()] : [...doubtful]
        everything = false
        doubtful.clear()
        for (let i = 0; i < ids.length; i += REVALIDATION_CHUNK) {
          // A new loss: it has asked for everything again.
          if (e !== epoch || stopped) return
          const batch: Array<[string, CachedToken]> = []
          for (let j = i; j < Math.min(ids.length, i + REVALIDATION_CHUNK); j++) {
            const entry = lru.peek(ids[j])
            if (entry !== undefined && entry.epoch !== e) batch.push([ids[j], entry])
          }
          if (batch.length === 0) continue
          let found: Array<Expected | undefined>
          try {
            found = await readVersions(batch.map(([id]) => id))
          } catch {
            // Redis unreachable: checked again later, entries served meanwhile.
            everything = true
            retry = setTimeout(() => { retry = undefined; kick() }, RETRY_MS).unref()
            return
          }
          if (e !== epoch) return
          batch.forEach(([id, entry], j) => {
            // Replaced meanwhile: the new entry's own ticket decides.
            if (lru.peek(id) !== entry) return
            const f = found[j]
            if (f !== undefined && f.version === entry.version && f.grant === entry.grant) entry.epoch = e
            else lru.delete(id)
          })
        }
      }
    } finally {
      running = false
    }
  }

  return {
    ticket: () => live ? epoch : -1,
    vouch (merchantId, entry, ticket) {
      if (live && ticket === epoch) entry.epoch = epoch
      else if (live && entry.epoch !== epoch) {
        doubtful.add(merchantId)
        kick()
      }
    },
    async follow (subscriber, channel, readVersions) {
      read = readVersions
      subscriber.on('close', () => {
        epoch++
        live = false
        everything = true
        doubtful.clear()
      })
      // Live once SUBSCRIBE is answered in the same epoch: from then on, no change goes unheard.
      const resume = async (): Promise<void> => {
        const e = epoch
        await subscriber.subscribe(channel)
        if (e === epoch && !stopped) {
          live = true
          kick()
        }
      }
      subscriber.on('ready', () => { resume().catch(() => {}) })
      await resume()
    },
    stop () {
      stopped = true
      clearTimeout(retry)
    }
  }
}
