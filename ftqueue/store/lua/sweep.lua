-- The reaper: advance the served clock; fail the attempts whose lease expired (their node
-- stopped renewing while Redis served others), and mark nodes silent for lease_ms of served
-- time as DEAD. Idempotent; any process may run it. Also trims the listing indexes of
-- entries older than index_ttl_ms (their records have expired by then) and forgets dead
-- workers and nodes whose records expired. A leased id whose record is corrupt is dropped.
-- Promotes due DELAYED tasks of every queue (also those no live worker is claiming from).
--
-- KEYS[1] clock
-- KEYS[2] leases          task id -> lease deadline (served ms)
-- KEYS[3] nodes           node id -> last heartbeat (served ms)
-- KEYS[4] stats
-- KEYS[5] failed_index
-- KEYS[6] task_index
-- KEYS[7] workers
-- KEYS[8] node_index
-- KEYS[9] corrupt
-- KEYS[10] queues         every queue's due DELAYED tasks are moved to its front
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3] lease_ms        ARGV[4] limit (expired leases handled per call)
-- ARGV[5] index_ttl_ms    ARGV[6] '1': also the housekeeping (trims and forgetting), '0' not
-- Returns: {{task_id, outcome, ...}, {dead_node_id, ...}}
local lease_ms, limit, index_ttl_ms = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local served = advance_served_clock()

local swept = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', K.leases, '-inf', served, 'LIMIT', 0, limit)) do
  local t = guarded('HMGET', k_task(id), 'in ' .. K.leases .. '; dropped from it',
                    'state', 'node_id')
  if t and ACTIVE[t[1]] then
    redis.call('HINCRBY', K.stats, 'leases_expired', 1)
    swept[#swept + 1] = id
    swept[#swept + 1] = fail_attempt(id, t[1] == 'RUNNING', 'NODE_DIED',
      'the node ' .. (t[2] or '?') .. ' stopped renewing its lease (node lost or frozen)', true)
  else
    redis.call('ZREM', K.leases, id)
  end
end

local dead = redis.call('ZRANGEBYSCORE', K.nodes, '-inf', served - lease_ms)
for _, node in ipairs(dead) do
  redis.call('ZREM', K.nodes, node)
  safe('HSET', k_node(node), 'state', 'DEAD', 'end_ms', NOW)
  redis.call('EXPIRE', k_node(node), DEAD_NODE_TTL_S)
  unpin(node)
end

for _, queue in ipairs(safe('SMEMBERS', K.queues)) do
  promote(queue, k_delayed(queue), PROMOTE_BATCH)
end

if ARGV[6] == '0' then return reply({swept, dead}) end
local horizon = NOW - index_ttl_ms
redis.call('ZREMRANGEBYSCORE', K.task_index, '-inf', horizon)
redis.call('ZREMRANGEBYSCORE', K.failed_index, '-inf', horizon)
-- A batch of the entries old enough, from a place that moves from sweep to sweep (a
-- different NOW each time): the oldest are the longest-lived workers and nodes, alive, and
-- a batch always taken from them would never reach the gone ones behind.
for _, index in ipairs({{K.workers, k_worker}, {K.node_index, k_node}}) do
  local cutoff = NOW - FORGET_AFTER_MS
  local n = redis.call('ZCOUNT', index[1], '-inf', cutoff)
  local from = 0
  if n > FORGET_BATCH then from = NOW % n end
  local stale = redis.call('ZRANGEBYSCORE', index[1], '-inf', cutoff, 'LIMIT', from,
                           FORGET_BATCH)
  if from + FORGET_BATCH > n and from > 0 then     -- the window wraps to the oldest
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', index[1], '-inf', cutoff, 'LIMIT', 0,
                                       from + FORGET_BATCH - n)) do
      stale[#stale + 1] = member
    end
  end
  for _, member in ipairs(stale) do
    if redis.call('EXISTS', index[2](member)) == 0 then redis.call('ZREM', index[1], member) end
  end
end
return reply({swept, dead})
