-- A worker process is gone (seen by its supervisor) or stopped on purpose: the attempt it was
-- running fails (charged to the retry budget when `charge` is '1'); the tasks it had only
-- prefetched go back to the queue unchanged.
-- ARGV: prefix, now_ms, node_id, worker_id, running_task_id (or ''), error_type, message, charge
-- Returns: {task_id, outcome, ...}
local node, worker, running, error_type, message = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local charge = ARGV[8] == '1'
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', P .. ':node_tasks:' .. node)) do
  local t = redis.call('HMGET', k_task(id), 'node_id', 'worker_id', 'state')
  if t[1] == node and t[2] == worker and ACTIVE[t[3]] then
    out[#out + 1] = id
    out[#out + 1] = fail_attempt(id, id == running, error_type, message, charge)
  end
end
return out
