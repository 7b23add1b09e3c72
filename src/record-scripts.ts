// The token store's Lua scripts: every write of a merchant record touches its metadata hash, its
// tokens key and its slot's counters in one script (one slot on Cluster, atomic everywhere).
// Changes are published on the events channel as `merchantId:version:grant` (`merchantId` on
// delete). A record is counted once its tokens key exists (src/merchant-counts.ts).
import type { Redis, Cluster } from 'ioredis'
import { COUNT_LUA } from './merchant-counts.js'
import { LEGACY_FIELDS, META_FIELDS } from './record-codec.js'

// KEYS[1] metadata, KEYS[2] tokens, KEYS[3] counters; ARGV: expected version ('' = a new
// onboarding), expected grant, new grant, expire-at ms, channel, merchant id, tokens, status,
// metadata field/value pairs... The hash is rewritten whole: fields of the old layout go.
const PUT_SCRIPT = `${COUNT_LUA}
local cur = redis.call('HMGET', KEYS[1], 'version', 'grant', 'status', 'connected_at')
local grant = ARGV[3]
if ARGV[1] ~= '' then
  if cur[1] ~= ARGV[1] or (cur[2] or '') ~= ARGV[2] then return -1 end
  grant = ARGV[2]
elseif cur[4] then
  -- A new onboarding never replaces a later one (a slow or retried write of an older exchange).
  for i = 9, #ARGV - 1, 2 do
    if ARGV[i] == 'connected_at' and tonumber(cur[4]) > tonumber(ARGV[i + 1]) then return -1 end
  end
end
local was = cur[1] and redis.call('EXISTS', KEYS[2]) == 1 and counted_status(cur[3])
local now = counted_status(ARGV[8])
local v = (tonumber(cur[1]) or 0) + 1
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'version', v, 'grant', grant, unpack(ARGV, 9))
redis.call('SET', KEYS[2], ARGV[7])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
redis.call('PEXPIREAT', KEYS[2], ARGV[4])
if was ~= now then
  if was then count(KEYS[3], was, -1) end
  count(KEYS[3], now, 1)
end
redis.call('PUBLISH', ARGV[5], ARGV[6] .. ':' .. v .. ':' .. grant)
return v`

// KEYS[1] metadata, KEYS[2] tokens, KEYS[3] counters; ARGV: expected version, expected grant,
// status, channel, merchant id
const STATUS_SCRIPT = `${COUNT_LUA}
local cur = redis.call('HMGET', KEYS[1], 'version', 'grant', 'status')
if cur[1] ~= ARGV[1] or (cur[2] or '') ~= ARGV[2] then return -1 end
local v = tonumber(cur[1]) + 1
redis.call('HSET', KEYS[1], 'version', v, 'status', ARGV[3])
local was, now = counted_status(cur[3]), counted_status(ARGV[3])
if was ~= now and redis.call('EXISTS', KEYS[2]) == 1 then
  count(KEYS[3], was, -1)
  count(KEYS[3], now, 1)
end
redis.call('PUBLISH', ARGV[4], ARGV[5] .. ':' .. v .. ':' .. ARGV[2])
return v`

// KEYS[1] metadata, KEYS[2] tokens, KEYS[3] lock, KEYS[4] counters; ARGV: channel, merchant id,
// deadline (ms, Redis's clock). A delete that reaches Redis after its caller gave up (answered
// 503) does nothing: it must not take effect behind the caller's back, after a stall or a pause.
const DELETE_SCRIPT = `${COUNT_LUA}
local t = redis.call('TIME')
if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[3]) then return -1 end
local status = redis.call('HGET', KEYS[1], 'status')
local n = redis.call('DEL', KEYS[1])
if redis.call('DEL', KEYS[2]) > 0 then count(KEYS[4], counted_status(status), -1) end
redis.call('DEL', KEYS[3])
if n > 0 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return n`

// KEYS[1] metadata, KEYS[2] tokens. Metadata (and the old layout's token fields) with the tokens
// key, read together so that they belong to the same version; nil when there is no record.
const READ_SCRIPT = `
local m = redis.call('HMGET', KEYS[1], ${[...META_FIELDS, ...LEGACY_FIELDS].map(f => `'${f}'`).join(', ')})
if not m[1] then return nil end
return {m, redis.call('GET', KEYS[2])}`

type Args = Array<string | number | Buffer>
export interface StoreCommands {
  cybsPutRecord: (meta: string, tokens: string, counts: string, ...args: Args) => Promise<number>
  cybsSetStatus: (meta: string, tokens: string, counts: string, ...args: Args) => Promise<number>
  cybsDeleteMerchant: (meta: string, tokens: string, lock: string, counts: string, ...args: Args) => Promise<number>
  /** Replies in Buffers: [metadata and legacy fields (META_FIELDS, LEGACY_FIELDS order), tokens]. */
  cybsReadRecordBuffer: (meta: string, tokens: string) => Promise<[Array<Buffer | null>, Buffer | null] | null>
}

export function defineStoreCommands (redis: Redis | Cluster): StoreCommands {
  if (!('cybsPutRecord' in redis)) {
    redis.defineCommand('cybsPutRecord', { numberOfKeys: 3, lua: PUT_SCRIPT })
    redis.defineCommand('cybsSetStatus', { numberOfKeys: 3, lua: STATUS_SCRIPT })
    redis.defineCommand('cybsDeleteMerchant', { numberOfKeys: 4, lua: DELETE_SCRIPT })
    redis.defineCommand('cybsReadRecord', { numberOfKeys: 2, lua: READ_SCRIPT })
  }
  return redis as unknown as StoreCommands
}
