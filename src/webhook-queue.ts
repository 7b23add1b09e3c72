// The webhook deliveries in Redis, beside the event stream in its slot: a sorted set of stream ids
// by due time, their bodies, their failed attempts, and the dead set of deliveries that gave up.
// A claim pushes a delivery's due time to the end of a lease: no other replica takes it before
// then, and a replica that dies mid-delivery leaves it to the others once the lease is over. The
// lease's end is also the claim's fence: only its holder settles the delivery. Times are Redis's.
import type { Cluster, Redis } from 'ioredis'
import type { RedisKeys } from './redis-keys.js'

export interface Claimed {
  streamId: string
  /** The stored event ('' when its body is missing). */
  stored: string
  /** Failed attempts so far. */
  attempts: number
  fence: string
}

/** done: delivered; retry: failed, due again after delayMs unless retryForMs have passed (then dead); release: not tried, due now. */
export type Settlement = { outcome: 'done' } | { outcome: 'release' } | { outcome: 'retry', delayMs: number, retryForMs: number }

export interface WebhookQueue {
  claim: (max: number, leaseMs: number) => Promise<Claimed[]>
  /** 'settled', 'dead' (retries exhausted), or 'lost' (the lease was over: another replica holds it). */
  settle: (job: Claimed, how: Settlement) => Promise<'settled' | 'dead' | 'lost'>
  /** Deliveries waiting (due now or later) and in the dead set. */
  backlog: () => Promise<{ pending: number, dead: number }>
}

const NOW = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function ms (n) return string.format('%.0f', n) end`

// KEYS[1] due, KEYS[2] bodies, KEYS[3] attempts; ARGV: lease ms, max. Replies { fence, id, body, attempts, ... }.
const CLAIM = `${NOW}
local ids = redis.call('ZRANGE', KEYS[1], '-inf', ms(now), 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then return {} end
local fence = ms(now + tonumber(ARGV[1]))
local out = { fence }
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], 'XX', fence, id)
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
  out[#out + 1] = redis.call('HGET', KEYS[3], id) or '0'
end
return out`

// KEYS[1] due, KEYS[2] bodies, KEYS[3] attempts, KEYS[4] dead; ARGV: id, fence, outcome, delay ms,
// retry-for ms, dead set cap. The stream id's first part is Redis's time when the event was appended.
const SETTLE = `${NOW}
local id = ARGV[1]
local score = redis.call('ZSCORE', KEYS[1], id)
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == 'done' then
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  return 1
end
if ARGV[3] == 'release' then
  redis.call('ZADD', KEYS[1], 'XX', ms(now), id)
  return 1
end
redis.call('HINCRBY', KEYS[3], id, 1)
local appended = tonumber(string.match(id, '^(%d+)-'))
if now - appended >= tonumber(ARGV[5]) then
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZADD', KEYS[4], ms(now), id)
  while redis.call('ZCARD', KEYS[4]) > tonumber(ARGV[6]) do
    local oldest = redis.call('ZPOPMIN', KEYS[4])
    redis.call('HDEL', KEYS[2], oldest[1])
  end
  return 2
end
redis.call('ZADD', KEYS[1], 'XX', ms(now + tonumber(ARGV[4])), id)
return 1`

interface QueueCommands {
  cybsClaimWebhooks: (due: string, bodies: string, attempts: string, leaseMs: number, max: number) => Promise<string[]>
  cybsSettleWebhook: (due: string, bodies: string, attempts: string, dead: string, id: string, fence: string, outcome: string, delayMs: number, retryForMs: number, deadCap: number) => Promise<number>
}

export function createWebhookQueue (redis: Redis | Cluster, keys: RedisKeys, opts: { deadCap?: number } = {}): WebhookQueue {
  if (!('cybsClaimWebhooks' in redis)) {
    redis.defineCommand('cybsClaimWebhooks', { numberOfKeys: 3, lua: CLAIM })
    redis.defineCommand('cybsSettleWebhook', { numberOfKeys: 4, lua: SETTLE })
  }
  const cmd = redis as unknown as QueueCommands
  const deadCap = opts.deadCap ?? 100_000
  const due = keys.eventKey('webhook-due')
  const bodies = keys.eventKey('webhook-body')
  const attempts = keys.eventKey('webhook-attempts')
  const dead = keys.eventKey('webhook-dead')
  return {
    async claim (max, leaseMs) {
      const reply = await cmd.cybsClaimWebhooks(due, bodies, attempts, leaseMs, max)
      const jobs: Claimed[] = []
      for (let i = 1; i + 2 < reply.length; i += 3) {
        jobs.push({ streamId: reply[i], stored: reply[i + 1], attempts: Number(reply[i + 2]), fence: reply[0] })
      }
      return jobs
    },
    async settle (job, how) {
      const delayMs = how.outcome === 'retry' ? Math.round(how.delayMs) : 0
      const retryForMs = how.outcome === 'retry' ? how.retryForMs : 0
      const r = await cmd.cybsSettleWebhook(due, bodies, attempts, dead, job.streamId, job.fence, how.outcome, delayMs, retryForMs, deadCap)
      return r === 0 ? 'lost' : r === 2 ? 'dead' : 'settled'
    },
    async backlog () {
      const [pending, deadCount] = await Promise.all([redis.zcard(due), redis.zcard(dead)])
      return { pending, dead: deadCount }
    }
  }
}
