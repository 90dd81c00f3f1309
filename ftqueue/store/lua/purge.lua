-- Cancel the queued and DELAYED tasks of one queue, a batch per call: each ends FAILED /
-- TASK_CANCELLED (its waiters told, its dependents released), none is dropped silently.
-- Tasks still waiting for their arguments are not in the queue yet and are left alone.
--
-- KEYS[1] leases
-- KEYS[2] stats
-- KEYS[3] failed_index
-- KEYS[4] corrupt
-- KEYS[5] queue(queue)
-- KEYS[6] delayed(queue)
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3] queue name      ARGV[4] batch (most ids taken per call)
-- Returns: {tasks cancelled, ids left in the queue and its delayed set}
local batch = tonumber(ARGV[4])
local cancelled = 0

local function purge_one(id, expected)
  local t = guarded('HMGET', k_task(id), 'in a purged queue; dropped from it', 'state')
  if t and t[1] == expected then
    finish(id, 'FAILED', 'TASK_CANCELLED', 'cancelled: its queue ' .. ARGV[3] .. ' was purged')
    cancelled = cancelled + 1
  end
end

for _, id in ipairs(safe('RPOP', K.queue, batch) or {}) do
  purge_one(id, 'PENDING_NODE_ASSIGNMENT')
end
local delayed = safe('ZPOPMIN', K.delayed, batch)
for i = 1, #delayed, 2 do purge_one(delayed[i], 'DELAYED') end
return reply({cancelled, redis.call('LLEN', K.queue) + redis.call('ZCARD', K.delayed)})
