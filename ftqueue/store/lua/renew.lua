-- A node's heartbeat: mark it alive; extend the leases of the tasks its workers say they
-- hold (only those: a task the node no longer holds, e.g. after Redis lost a commit, is
-- left to expire and be retried); mark RUNNING the ones its workers say they run.
-- ARGV: prefix, now_ms, node_id, lease_ms, running_ids_csv, held_task_id...
-- Returns: the number of leases renewed.
local node, deadline = ARGV[3], NOW + tonumber(ARGV[4])
redis.call('ZADD', P .. ':nodes', NOW, node)
redis.call('HSET', P .. ':node:' .. node, 'state', 'ALIVE', 'heartbeat_ms', NOW)
redis.call('PERSIST', P .. ':node:' .. node)
local renewed = 0
for i = 6, #ARGV do
  local t = redis.call('HMGET', k_task(ARGV[i]), 'node_id', 'state')
  if t[1] == node and ACTIVE[t[2]] then
    redis.call('ZADD', P .. ':leases', 'XX', deadline, ARGV[i])
    renewed = renewed + 1
  end
end
for id in string.gmatch(ARGV[5], '[^,]+') do
  local tkey = k_task(id)
  local t = redis.call('HMGET', tkey, 'node_id', 'state')
  if t[1] == node and t[2] == 'SUBMITTED_TO_WORKER' then
    redis.call('HSET', tkey, 'state', 'RUNNING')
  end
end
local key = P .. ':node_tasks:' .. node
for _, id in ipairs(redis.call('SMEMBERS', key)) do
  local t = redis.call('HMGET', k_task(id), 'node_id', 'state')
  if t[1] ~= node or not ACTIVE[t[2]] then redis.call('SREM', key, id) end
end
return renewed
