-- Register a waiter's notification list on tasks that are not final yet, atomically with the
-- state check (so no completion slips between the check and the registration). A corrupt
-- record is 'ready': nothing will change it, and reading it tells the waiter what is wrong.
--
-- KEYS[1] stats
-- KEYS[2] corrupt
-- KEYS[NK+3i-2], KEYS[NK+3i-1], KEYS[NK+3i]: task(t), result(object id), waiters(t) of the
--   i-th id, t its task (the id itself, or <t> of an id <t>#<i>)
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3] notify_key (a done(client_id) list; its name is stored, the list is not touched)
-- ARGV[4..] task ids (t), in the order of their KEYS
-- Returns: per id 'ready' | 'pending' | 'missing'
local notify_key = ARGV[3]

local function watch_one(id, tkey, rkey, wkey)
  local t = guarded('HMGET', tkey, 'by a waiter', 'state', 'notify')
  if not t then return 'ready' end
  local state = t[1]
  if not state then
    if redis.call('EXISTS', rkey) == 1 then return 'ready' end
    return 'missing'
  end
  if TERMINAL[state] then return 'ready' end
  if rkey ~= k_result(id) and redis.call('EXISTS', rkey) == 1 then
    return 'ready'     -- a value the running task already returned (stream.lua)
  end
  if t[2] ~= notify_key then
    safe('SADD', wkey, notify_key)
    redis.call('HSET', tkey, 'waited', '1')    -- finish looks for waiters only then
  end
  return 'pending'
end

local out = {}
for i = 1, #ARGV - 3 do
  local b = NK + 3 * (i - 1)
  out[i] = watch_one(ARGV[3 + i], KEYS[b + 1], KEYS[b + 2], KEYS[b + 3])
end
return reply(out)
