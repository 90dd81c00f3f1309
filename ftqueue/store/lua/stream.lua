-- Store values a running attempt returns one by one (a generator's yields, or the values of
-- a task with num_returns > 1), fenced like a commit. The first value stored under an index
-- stays: a retried attempt does not hand anyone a value twice. With `tell`, the submitter's
-- notification list gets "<task_id>#<i>" (with the value when it is small) and each waiter's
-- list the id. The values expire with the task's result (lib.lua set_retention).
--
-- KEYS[1] stats
-- KEYS[2] corrupt
-- KEYS[3] task(task_id)
-- KEYS[NK+i]: result(<task_id>#<index>) of the i-th value
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3] task_id         ARGV[4] fence       ARGV[5] tell ('1' | '0')
-- ARGV[6..] n pairs: index, value blob
-- Returns: the number of values stored, or 'fenced' (the attempt lost its task) | 'corrupt'
local id, fence, tell = ARGV[3], ARGV[4], ARGV[5] == '1'
local tkey = K.task
local t = guarded('HMGET', tkey, 'by a returned value', 'state', 'fence', 'notify', 'items')
if not t then return reply('corrupt') end
if not ACTIVE[t[1]] or t[2] ~= fence then return reply('fenced') end
local notify_key = t[3]
local waiters = {}
if tell then waiters = safe('SMEMBERS', k_waiters(id)) end
local items, stored = tonumber(t[4]) or 0, 0
for i = 0, (#ARGV - 5) / 2 - 1 do
  local index, blob = ARGV[6 + 2 * i], ARGV[7 + 2 * i]
  local item = id .. '#' .. index
  if redis.call('SET', KEYS[NK + i + 1], blob, 'NX') then
    stored = stored + 1
    items = math.max(items, tonumber(index) + 1)
    if tell and notify_key and notify_key ~= '' then
      if #blob <= INLINE_RESULT_MAX then
        safe('RPUSH', notify_key, item .. '\n' .. blob)
      else
        safe('RPUSH', notify_key, item)
      end
      redis.call('EXPIRE', notify_key, NOTIFY_TTL_S)
    end
    for _, w in ipairs(waiters) do
      safe('RPUSH', w, item)
      redis.call('EXPIRE', w, NOTIFY_TTL_S)
    end
  end
end
redis.call('HSET', tkey, 'items', items)
return reply(stored)
