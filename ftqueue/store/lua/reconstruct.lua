-- Rebuild a lost result by re-running the task that made it (and, recursively, the tasks
-- that made its lost arguments), each from its own retry budget, as a new attempt.
-- Atomic, so concurrent getters trigger one re-execution.
-- ARGV: prefix, now_ms, task_id
-- Returns: 'ready' (nothing lost) | 'waiting' (not final: running or being rebuilt) |
--          'resubmitted' | 'exhausted' (no retries left) | 'no_lineage' (record or args gone)
local function rebuild(id, depth)
  if depth > 100 then return 'no_lineage' end
  local tkey = k_task(id)
  local t = redis.call('HMGET', tkey, 'state', 'dep_ids', 'queue')
  local state = t[1]
  if not state then
    if redis.call('EXISTS', k_result(id)) == 1 then return 'ready' end
    return 'no_lineage'
  end
  if state ~= 'FINISHED' then
    if TERMINAL[state] then return 'ready' end
    return 'waiting'
  end
  if redis.call('EXISTS', k_result(id)) == 1 then return 'ready' end
  if redis.call('EXISTS', k_args(id)) == 0 then return 'no_lineage' end
  if not budget_left(id) then return 'exhausted' end
  local waiting = {}
  for dep in string.gmatch(t[2] or '', '[^,]+') do
    local status = rebuild(dep, depth + 1)
    if status == 'exhausted' or status == 'no_lineage' then return status end
    if status ~= 'ready' then waiting[#waiting + 1] = dep end
  end
  record_attempt(id, 'FINISHED', '', '')
  redis.call('HINCRBY', tkey, 'attempt', 1)
  redis.call('HINCRBY', tkey, 'retries', 1)
  redis.call('HDEL', tkey, 'node_id', 'worker_id', 'start_ms', 'end_ms', 'error_type',
             'error_message')
  redis.call('PERSIST', tkey)
  redis.call('PERSIST', k_args(id))
  redis.call('PERSIST', P .. ':attempts:' .. id)
  redis.call('HINCRBY', P .. ':stats', 'retries:OBJECT_LOST', 1)
  if #waiting > 0 then
    for _, dep in ipairs(waiting) do redis.call('SADD', P .. ':dependents:' .. dep, id) end
    redis.call('HSET', tkey, 'state', 'PENDING_ARGS_AVAIL', 'deps', #waiting)
  else
    redis.call('HSET', tkey, 'state', 'PENDING_NODE_ASSIGNMENT')
    enqueue(id, t[3], true)
  end
  return 'resubmitted'
end

return rebuild(ARGV[3], 0)
