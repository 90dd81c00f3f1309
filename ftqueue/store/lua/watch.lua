-- Register a waiter's notification list on tasks that are not final yet, atomically with the
-- state check (so no completion slips between the check and the registration).
-- ARGV: prefix, now_ms, notify_key, object_id...
-- Returns: per id 'ready' | 'pending' | 'missing'
local notify_key = ARGV[3]
local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local t = redis.call('HMGET', k_task(id), 'state', 'notify')
  local state = t[1]
  if not state then
    if redis.call('EXISTS', k_result(id)) == 1 then out[#out + 1] = 'ready'
    else out[#out + 1] = 'missing' end
  elseif TERMINAL[state] then
    out[#out + 1] = 'ready'
  else
    if t[2] ~= notify_key then redis.call('SADD', P .. ':waiters:' .. id, notify_key) end
    out[#out + 1] = 'pending'
  end
end
return out
