-- Cancel the queued and DELAYED tasks of one queue, a batch per call: each ends FAILED /
-- TASK_CANCELLED (its waiters told, its dependents released), none is dropped silently.
-- Tasks still waiting for their arguments are not in the queue yet and are left alone. The
-- call that empties the queue also cancels its tasks held back by max_concurrency.
--
-- KEYS[1] leases
-- KEYS[2] stats
-- KEYS[3] failed_index
-- KEYS[4] corrupt
-- KEYS[5] queue(queue)
-- KEYS[6] delayed(queue)
-- KEYS[7] limit_keys      their waiting lists hold tasks of this queue held back by a limit
-- KEYS[8] nodes           their pinned slots of this queue are purged too
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

-- Every slot of the queue: one per resource shape, and those pinned to live nodes.
local slots, pinned = {K.queue}, ARGV[3] .. '@node='
for _, shape in ipairs(safe('SMEMBERS', k_shapes(ARGV[3]))) do
  slots[#slots + 1] = k_queue(queue_slot(ARGV[3], shape))
end
for _, n in ipairs(redis.call('ZRANGE', K.nodes, 0, -1)) do
  for _, slot in ipairs(safe('SMEMBERS', k_pins(n))) do
    if string.sub(slot, 1, #pinned) == pinned then slots[#slots + 1] = k_queue(slot) end
  end
end
local taken = 0
for _, qkey in ipairs(slots) do
  if taken < batch then
    local ids = safe('RPOP', qkey, batch - taken) or {}
    taken = taken + #ids
    for _, id in ipairs(ids) do purge_one(id, 'PENDING_NODE_ASSIGNMENT') end
  end
end
local delayed = safe('ZPOPMIN', K.delayed, batch)
for i = 1, #delayed, 2 do purge_one(delayed[i], 'DELAYED') end
local left = redis.call('ZCARD', K.delayed)
for _, qkey in ipairs(slots) do left = left + redis.call('LLEN', qkey) end
if left == 0 then
  for _, key in ipairs(safe('SMEMBERS', K.limit_keys)) do
    -- Emptied first: a purged task's end wakes nothing of its own list meanwhile.
    local wkey = k_limit_waiting(key)
    local ids = safe('LRANGE', wkey, 0, -1)
    redis.call('DEL', wkey)
    local keep, doomed = {}, {}
    for _, id in ipairs(ids) do
      local t = guarded('HMGET', k_task(id), 'in ' .. wkey .. '; dropped from it', 'state',
                        'queue')
      if t and t[1] == 'PENDING_NODE_ASSIGNMENT' then
        if t[2] == ARGV[3] then doomed[#doomed + 1] = id else keep[#keep + 1] = id end
      end
    end
    for _, id in ipairs(doomed) do purge_one(id, 'PENDING_NODE_ASSIGNMENT') end
    for _, id in ipairs(keep) do redis.call('RPUSH', wkey, id) end
  end
end
return reply({cancelled, left})
