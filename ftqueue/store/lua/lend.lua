-- A running task blocked in `get`/`wait` lends its CPUs to its node while it waits, as in
-- Ray (so the tasks it waits for can run there), and takes them back when it goes on (the
-- node may then run over its CPUs for a moment). GPUs and the rest stay held.
-- Its max_concurrency slot is lent the same way (its key's oldest held-back task is woken),
-- so a task that waits for a task of its own limit key cannot deadlock the key; taken back,
-- the key may run over its limit for a moment (field 'limit_lent' while lent).
--
-- KEYS[1] stats
-- KEYS[2] corrupt
-- KEYS[3] task(task_id)
-- KEYS[4] leases          (a woken held-back task may fail: lib.lua enqueue)
-- KEYS[5] failed_index
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3] task_id         ARGV[4] lend ('1': blocked | '0': going on)
-- Returns: 'lent' | 'taken back' | 'unchanged'
local id, lending = ARGV[3], ARGV[4] == '1'
local t = guarded('HMGET', K.task, 'by a blocked task', 'held', 'shape', 'lent', 'state',
                  'limit_key', 'max_concurrency', 'limit_lent')
if not t then return reply('unchanged') end
local outcome = 'unchanged'
-- The limit slot: only a running attempt's (release_limit clears the flag when it ends).
local key, max = t[5], tonumber(t[6])
if key and max and ACTIVE[t[4]] then
  local rkey = k_limit_running(key)
  if lending and not t[7] and safe('SREM', rkey, id) == 1 then
    redis.call('HSET', K.task, 'limit_lent', '1')
    if safe('SCARD', rkey) < max then wake_limited(key) end
    outcome = 'lent'
  elseif not lending and t[7] then
    redis.call('HDEL', K.task, 'limit_lent')
    safe('SADD', rkey, id)
    outcome = 'taken back'
  end
end
if not t[1] then return reply(outcome) end
local cpu = shape_units(t[2]).CPU
local fkey = k_node_free(t[1])
sound_free(fkey)
if not cpu or redis.call('EXISTS', fkey) == 0 then return reply(outcome) end
if lending and not t[3] then
  redis.call('HINCRBY', fkey, 'CPU', cpu)
  redis.call('HSET', K.task, 'lent', '1')
  if redis.call('HDEL', fkey, BLOCKED_FLAG) == 1 then ring('@' .. t[1]) end
  return reply('lent')
end
if not lending and t[3] then
  redis.call('HINCRBY', fkey, 'CPU', -cpu)
  redis.call('HDEL', K.task, 'lent')
  return reply('taken back')
end
return reply(outcome)
