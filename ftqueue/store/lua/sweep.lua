-- The reaper: fail the attempts whose lease expired (their node stopped renewing), and mark
-- nodes without a heartbeat for lease_ms as DEAD. Idempotent; any process may run it.
-- ARGV: prefix, now_ms, lease_ms, limit
-- Returns: {{task_id, outcome, ...}, {dead_node_id, ...}}
local lease_ms, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local swept = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. ':leases', '-inf', NOW, 'LIMIT', 0, limit)) do
  local t = redis.call('HMGET', k_task(id), 'state', 'node_id')
  if ACTIVE[t[1]] then
    redis.call('HINCRBY', P .. ':stats', 'leases_expired', 1)
    swept[#swept + 1] = id
    swept[#swept + 1] = fail_attempt(id, t[1] == 'RUNNING', 'NODE_DIED',
      'the node ' .. (t[2] or '?') .. ' stopped renewing its lease (node lost or frozen)', true)
  else
    redis.call('ZREM', P .. ':leases', id)
  end
end
local dead = redis.call('ZRANGEBYSCORE', P .. ':nodes', '-inf', NOW - lease_ms)
for _, node in ipairs(dead) do
  redis.call('ZREM', P .. ':nodes', node)
  redis.call('HSET', P .. ':node:' .. node, 'state', 'DEAD', 'end_ms', NOW)
  redis.call('EXPIRE', P .. ':node:' .. node, DEAD_NODE_TTL_S)
end
return {swept, dead}
