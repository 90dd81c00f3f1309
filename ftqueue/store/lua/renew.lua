-- A node's heartbeat: mark it alive, extend the leases of the tasks its workers hold, and
-- mark RUNNING the ones its workers report running (prefetched tasks stay SUBMITTED_TO_WORKER).
-- ARGV: prefix, now_ms, node_id, lease_deadline_ms, running_task_id...
-- Returns: the number of leases renewed.
local node, deadline = ARGV[3], ARGV[4]
redis.call('ZADD', P .. ':nodes', NOW, node)
redis.call('HSET', P .. ':node:' .. node, 'state', 'ALIVE', 'heartbeat_ms', NOW)
redis.call('PERSIST', P .. ':node:' .. node)
local key = P .. ':node_tasks:' .. node
local renewed = 0
for _, id in ipairs(redis.call('SMEMBERS', key)) do
  local t = redis.call('HMGET', k_task(id), 'node_id', 'state')
  if t[1] == node and ACTIVE[t[2]] then
    redis.call('ZADD', P .. ':leases', 'XX', deadline, id)
    renewed = renewed + 1
  else
    redis.call('SREM', key, id)
  end
end
for i = 5, #ARGV do
  local tkey = k_task(ARGV[i])
  local t = redis.call('HMGET', tkey, 'node_id', 'state')
  if t[1] == node and t[2] == 'SUBMITTED_TO_WORKER' then
    redis.call('HSET', tkey, 'state', 'RUNNING')
  end
end
return renewed
