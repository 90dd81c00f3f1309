-- The reaper: fail the attempts whose lease expired (their node stopped renewing), and mark
-- nodes without a heartbeat for lease_ms as DEAD. Idempotent; any process may run it.
-- Also trims the listing indexes of entries older than index_ttl_ms (their records have
-- expired by then) and forgets dead workers and nodes whose records expired.
-- ARGV: prefix, now_ms, lease_ms, limit, index_ttl_ms
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
local horizon = NOW - tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', P .. ':index:tasks', '-inf', horizon)
redis.call('ZREMRANGEBYSCORE', P .. ':index:failed', '-inf', horizon)
for _, spec in ipairs({{P .. ':workers', P .. ':worker:'}, {P .. ':index:nodes', P .. ':node:'}}) do
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', spec[1], '-inf', NOW - 3600000, 'LIMIT', 0, 100)) do
    if redis.call('EXISTS', spec[2] .. member) == 0 then redis.call('ZREM', spec[1], member) end
  end
end
return {swept, dead}
