-- Rebuild a lost result by re-running the task that made it (and, recursively, the tasks
-- that made its lost arguments), each from its own retry budget, as a new attempt.
-- Atomic, so concurrent getters trigger one re-execution.
--
-- KEYS[1] stats
-- KEYS[2] corrupt
-- KEYS[3] task(task_id)   the task named; its lost arguments' keys are built at run time
-- KEYS[4] result(object_id)  the lost value: the task's result, or one of its values <id>#<i>
-- KEYS[5] args(task_id)
-- KEYS[6] attempts(task_id)
-- KEYS[7] leases          (a task queued here may fail: lib.lua enqueue)
-- KEYS[8] failed_index
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3] task_id
-- Returns: 'ready' (nothing lost) | 'waiting' (not final: running or being rebuilt) |
--          'resubmitted' | 'exhausted' (no retries left) | 'no_lineage' (record or args gone,
--          or corrupt)
local root = ARGV[3]

local function keys_of(id)
  if id == root then return K.task, K.result, K.args, K.attempts end
  return k_task(id), k_result(id), k_args(id), k_attempts(id)
end

local function restart(id, tkey, akey, attempts_key, queue, waiting)
  record_attempt(id, 'FINISHED', '', '')
  count_summary('FINISHED', redis.call('HGET', tkey, 'func'), -1)
  redis.call('HINCRBY', tkey, 'attempt', 1)
  redis.call('HINCRBY', tkey, 'retries', 1)
  redis.call('HDEL', tkey, 'node_id', 'worker_id', 'start_ms', 'end_ms', 'error_type',
             'error_message')
  for _, key in ipairs({tkey, akey, attempts_key}) do redis.call('PERSIST', key) end
  redis.call('HINCRBY', K.stats, 'retries:OBJECT_LOST', 1)
  if #waiting > 0 then
    for _, dep in ipairs(waiting) do
      safe('SADD', k_dependents(dep), id)
      redis.call('HSET', k_task(dep), 'dependents', '1')
    end
    redis.call('HSET', tkey, 'state', 'PENDING_ARGS_AVAIL', 'deps', #waiting)
  else
    redis.call('HSET', tkey, 'state', 'PENDING_NODE_ASSIGNMENT')
    enqueue(id, queue, true)
  end
end

local function rebuild(id, depth)
  if depth > RECONSTRUCT_DEPTH_MAX then return 'no_lineage' end
  local tkey, rkey, akey, attempts_key = keys_of(id)
  local t = guarded('HMGET', tkey, 'while rebuilding a lost result', 'state', 'dep_ids', 'queue')
  if not t then return 'no_lineage' end
  local state = t[1]
  if not state then
    if redis.call('EXISTS', rkey) == 1 then return 'ready' end
    return 'no_lineage'
  end
  if state ~= 'FINISHED' then
    if TERMINAL[state] then return 'ready' end
    return 'waiting'
  end
  if redis.call('EXISTS', rkey) == 1 then return 'ready' end
  if redis.call('EXISTS', akey) == 0 then return 'no_lineage' end
  if not budget_left(id) then return 'exhausted' end
  local waiting = {}
  for dep in string.gmatch(t[2] or '', '[^,]+') do
    local status = rebuild(dep, depth + 1)
    if status == 'exhausted' or status == 'no_lineage' then return status end
    if status ~= 'ready' then waiting[#waiting + 1] = dep end
  end
  restart(id, tkey, akey, attempts_key, t[3], waiting)
  return 'resubmitted'
end

return reply(rebuild(root, 0))
