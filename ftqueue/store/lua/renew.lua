-- A node's heartbeat: advance the served clock; mark the node alive; extend the leases of
-- the tasks its workers say they hold (only those: a task the node no longer holds, e.g.
-- after Redis lost a commit, is left to expire and be retried); mark RUNNING the ones its
-- workers say they run; drop from the node's task set what it no longer holds.
--
-- KEYS[1] clock
-- KEYS[2] leases          task id -> lease deadline (served ms)
-- KEYS[3] nodes           node id -> last heartbeat (served ms)
-- KEYS[4] stats
-- KEYS[5] corrupt
-- KEYS[6] node(node_id)
-- KEYS[7] node_tasks(node_id)
-- KEYS[8] node_free(node_id)  rebuilt when a node declared dead comes back (see below)
-- KEYS[NK+i] task(id) of the i-th held id, then of each running id, in ARGV order
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3] node_id         ARGV[4] lease_ms       ARGV[5] n_held
-- ARGV[6..5+n_held] held task ids, then the running task ids, then (optional) the worker
--                   that runs each of them, in the same order
-- Returns: {the number of leases renewed, the running ids whose attempts must stop (see
--          below), the number of live nodes (nodes space their sweeps by it), and
--          for each running task with a cancel request, the request as cancel.lua relays
--          it ('<task id> <interrupt|force> <number>')}
local node, lease_ms, n_held = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local served = advance_served_clock()
redis.call('ZADD', K.nodes, served, node)
-- A node declared dead while it was only frozen (or cut off) lost its free capacity with its
-- pins (lib.lua unpin), and a node without it counts nothing: rebuilt from what it offers,
-- less what the tasks it still holds have reserved there (those give it back when they end).
local was = guarded('HMGET', K.node, 'as the record of node ' .. node, 'state')
local revived = was and was[1] == 'DEAD'
sound_free(K.node_free)
if revived and redis.call('EXISTS', K.node_free) == 0 then rebuild_free(node, K.node_free) end
safe('HSET', K.node, 'state', 'ALIVE', 'heartbeat_ms', NOW)
-- Only a record marked DEAD (or lost) was given a TTL (sweep, deregister).
if not (was and was[1] == 'ALIVE') then redis.call('PERSIST', K.node) end

local function forget(id)
  redis.call('ZREM', K.leases, id)
  safe('SREM', K.node_tasks, id)
end

local renewed = 0
for i = 1, n_held do
  local id = ARGV[5 + i]
  local t = guarded('HMGET', KEYS[NK + i], 'held by node ' .. node, 'node_id', 'state')
  if not t then
    forget(id)
  elseif t[1] == node and ACTIVE[t[2]] then
    redis.call('ZADD', K.leases, 'XX', served + lease_ms, id)
    renewed = renewed + 1
  end
end
-- Attempts the node's workers must stop, returned: on a revived node, those whose tasks were
-- handed on meanwhile (retried, here or elsewhere); on any node, those Redis forgot (a running
-- task's record never expires: none means Redis lost its data; drivers submit it again).
local stale, cancels = {}, {}
local n_running = #KEYS - NK - n_held
for i = n_held + 1, n_held + n_running do
  local tkey = KEYS[NK + i]
  local t = guarded('HMGET', tkey, 'run by node ' .. node, 'node_id', 'state', 'worker_id',
                    'cancel', 'cancel_n')
  -- A cancel request of a running task, again: the node's relay list is a fast path whose
  -- pop can be lost with its reply; the request in the record is not.
  if t and t[4] and t[1] == node then
    cancels[#cancels + 1] = ARGV[5 + i] .. ' ' .. t[4] .. ' ' .. (t[5] or '0')
  end
  if t and t[1] == node and t[2] == 'SUBMITTED_TO_WORKER' then
    redis.call('HSET', tkey, 'state', 'RUNNING')
  end
  local by = ARGV[5 + n_running + i]     -- the worker that runs it, when given
  if t and (not t[2] or (revived and not TERMINAL[t[2]] and not (t[1] == node
      and ACTIVE[t[2]] and (not by or by == t[3])))) then
    stale[#stale + 1] = ARGV[5 + i]
  end
end
for _, id in ipairs(safe('SMEMBERS', K.node_tasks)) do
  local t = guarded('HMGET', k_task(id), 'in ' .. K.node_tasks .. '; dropped from it',
                    'node_id', 'state')
  if not t then
    forget(id)
  elseif t[1] ~= node or not ACTIVE[t[2]] then
    redis.call('SREM', K.node_tasks, id)
  end
end
return reply({renewed, stale, redis.call('ZCARD', K.nodes), cancels})
