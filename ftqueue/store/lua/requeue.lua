-- Run a FAILED task again (a dead-letter workflow): same task id, a fresh retry budget, the
-- next attempt number; its final attempt joins the attempts list, its stored error is
-- dropped and its retention cleared, so any ref to it sees the new outcome. Other states are
-- left alone.
--
-- KEYS[1] stats
-- KEYS[2] corrupt
-- KEYS[3] task(task_id)
-- KEYS[4] args(task_id)
-- KEYS[5] attempts(task_id)
-- KEYS[6] result(task_id)
-- KEYS[7] children(task_id)
-- KEYS[8] leases          (a task queued here may fail: lib.lua enqueue)
-- KEYS[9] failed_index
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3] task_id
-- Returns: 'requeued' | 'missing' | 'no_lineage' (its arguments expired) | 'corrupt' |
--          the state of a task that is not FAILED
local id = ARGV[3]
local t = guarded('HMGET', K.task, 'by a requeue', 'state', 'queue', 'error_type',
                  'error_message', 'end_ms', 'dep_ids', 'func')
if not t then return reply('corrupt') end
if not t[1] then return reply('missing') end
if t[1] ~= 'FAILED' then return reply(t[1]) end
if redis.call('EXISTS', K.args) == 0 then return reply('no_lineage') end
local a = redis.call('HMGET', K.task, 'attempt', 'node_id', 'worker_id', 'start_ms')
safe('RPUSH', K.attempts, cjson.encode({
  attempt_number = tonumber(a[1]) or 0, state = 'FAILED', node_id = a[2] or '',
  worker_id = a[3] or '', error_type = t[3] or '', error_message = t[4] or '',
  start_ms = tonumber(a[4]) or tonumber(t[5]) or NOW, end_ms = tonumber(t[5]) or NOW}))
redis.call('HINCRBY', K.task, 'attempt', 1)
redis.call('HSET', K.task, 'retries', 0)
redis.call('HDEL', K.task, 'node_id', 'worker_id', 'start_ms', 'end_ms', 'error_type',
           'error_message', 'cancel', 'cancel_n', 'due_ms')
redis.call('DEL', K.result)
for _, key in ipairs({K.task, K.args, K.attempts, K.children}) do redis.call('PERSIST', key) end
redis.call('HINCRBY', K.stats, 'requeued', 1)
count_summary('FAILED', t[7], -1)
-- Cancelled while waiting for its arguments: it waits for those not final yet, again.
local pending = 0
for dep in string.gmatch(t[6] or '', '[^,]+') do
  local state = guarded('HGET', k_task(dep), 'as a dependency of ' .. id, 'state')
  if state and not TERMINAL[state] then
    safe('SADD', k_dependents(dep), id)
    redis.call('HSET', k_task(dep), 'dependents', '1')
    pending = pending + 1
  end
end
if pending > 0 then
  redis.call('HSET', K.task, 'state', 'PENDING_ARGS_AVAIL', 'deps', pending)
else
  redis.call('HSET', K.task, 'state', 'PENDING_NODE_ASSIGNMENT')
  enqueue(id, t[2], false)
end
return reply('requeued')
