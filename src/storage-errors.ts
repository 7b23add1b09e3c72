// Any failure to reach Redis (connection down, command timeout, offline queue off) becomes the
// one domain error the routes map to 503 storage_unavailable.
import { setTimeout as sleep } from 'node:timers/promises'
import { StorageUnavailableError } from './errors.js'

const OUTAGE_REPLY = /^(LOADING|READONLY|CLUSTERDOWN|MASTERDOWN|TRYAGAIN|BUSY)\b/

export async function storageCall<T> (fn: () => Promise<T>): Promise<T> {
  try {
    return await fn()
  } catch (err) {
    // A ReplyError is a bug (bad script or command), except the replies of a Redis that is
    // loading, failing over or partitioned, which are outages like a dropped connection.
    if ((err as Error).name === 'ReplyError' && !OUTAGE_REPLY.test((err as Error).message)) throw err
    const e = new StorageUnavailableError()
    e.cause = err
    throw e
  }
}

/**
 * Retries a write while Redis blips (StorageUnavailableError only), waiting `delaysMs` between
 * attempts: for writes of tokens that exist nowhere else yet.
 */
export async function retryStorage<T> (fn: () => Promise<T>, delaysMs: number[], onRetry: (attempt: number) => void): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn()
    } catch (err) {
      if (!(err instanceof StorageUnavailableError) || attempt >= delaysMs.length) throw err
      onRetry(attempt)
      await sleep(delaysMs[attempt])
    }
  }
}
