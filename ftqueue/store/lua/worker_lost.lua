-- A worker process is gone (seen by its supervisor) or stopped on purpose: the attempt it was
-- running fails (charged to the retry budget when `charge` is '1'); the tasks it had only
-- prefetched go back to the queue unchanged.
--
-- KEYS[1] leases
-- KEYS[2] stats
-- KEYS[3] failed_index
-- KEYS[4] corrupt
-- KEYS[5] node_tasks(node_id)
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3] node_id         ARGV[4] worker_id      ARGV[5] running_task_id or ''
-- ARGV[6] error_type      ARGV[7] message        ARGV[8] charge ('1' | '0')
-- Returns: {task_id, outcome, ...}
local node, worker, running, error_type, message = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local charge = ARGV[8] == '1'
local out = {}
for _, id in ipairs(safe('SMEMBERS', K.node_tasks)) do
  local t = guarded('HMGET', k_task(id), 'in ' .. K.node_tasks .. '; dropped from it',
                    'node_id', 'worker_id', 'state')
  if not t then
    redis.call('SREM', K.node_tasks, id)
    redis.call('ZREM', K.leases, id)
  elseif t[1] == node and t[2] == worker and ACTIVE[t[3]] then
    out[#out + 1] = id
    out[#out + 1] = fail_attempt(id, id == running, error_type, message, charge)
  end
end
return reply(out)
