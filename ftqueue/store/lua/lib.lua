-- Shared helpers, placed after the generated prelude (see ftqueue/store/scripts.py: `K`, the
-- script's fixed KEYS by name; `NK`, how many; `k_<name>(id)`, the keys found at run time;
-- the constants) and before each script. Never run on its own.
-- Every script takes ARGV[1] = the namespace (for `k_<name>`) and ARGV[2] = now in ms ('' for
-- Redis's own clock); its own arguments follow. Every script answers `reply(result)`:
-- {result, keys isolated as corrupt by this call (each reported once, ever)}.

-- Time comes from Redis itself unless a caller (a test's fake clock) passes it: leases must
-- not depend on the clocks of the hosts that run nodes and drivers.
local NOW = tonumber(ARGV[2])
if not NOW then
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local TERMINAL = {FINISHED = true, FAILED = true}
local ACTIVE = {SUBMITTED_TO_WORKER = true, RUNNING = true}

-- Corrupt records ------------------------------------------------------------------------
-- A key holding a type ftqueue never writes there must not fail the script (that killed
-- every node that swept it, at every restart): it is isolated, counted, reported once.

local CORRUPT = {}

local function reply(result)
  return {result, CORRUPT}
end

local function is_wrong_type(r)
  return type(r) == 'table' and r.err ~= nil
    and string.find(tostring(r.err), 'WRONGTYPE', 1, true) ~= nil
end

-- Pass any other error on with its text (its code first: OOM, BUSY...), as redis.call would.
local function raise(r)
  error(tostring(r.err), 0)
end

local function key_type(key)
  local t = redis.call('TYPE', key)
  if type(t) == 'table' then return t.ok or '?' end
  return t
end

local function isolate(key, reason)
  redis.call('HINCRBY', K.stats, 'corrupt', 1)
  if redis.call('HSETNX', K.corrupt, key, reason) == 1 then CORRUPT[#CORRUPT + 1] = key end
end

-- A read of a record this script did not write (a task hash, its arguments): nil if the key
-- holds another type, which is then isolated; the caller drops the id from where it found it.
local function guarded(cmd, key, found_in, ...)
  local r = redis.pcall(cmd, key, ...)
  if is_wrong_type(r) then
    isolate(key, 'a ' .. key_type(key) .. ' where a record belongs; found ' .. found_in)
    return nil
  end
  if type(r) == 'table' and r.err then raise(r) end
  return r
end

-- A list, set or hash ftqueue keeps (a queue, a notification list, a task's dependents, a
-- node record...) that holds another type is moved aside to its quarantine key, so the
-- structure works again; the command then runs on the fresh key.
local function safe(cmd, key, ...)
  local r = redis.pcall(cmd, key, ...)
  if is_wrong_type(r) then
    local aside = k_quarantine(key)
    local was = key_type(key)
    redis.call('RENAME', key, aside)
    isolate(key, 'a ' .. was .. ' where ftqueue keeps another type; moved to ' .. aside)
    return redis.call(cmd, key, ...)
  end
  if type(r) == 'table' and r.err then raise(r) end
  return r
end

-- The served clock (docs/design.md, "Redis stalls are not node deaths") -------------------
-- Lease deadlines and node heartbeats are kept in time during which Redis served someone:
-- a gap between two scripts that advance the clock (renew, sweep) counts at most
-- SERVED_GAP_MAX_MS, so a frozen or restarting Redis ages no lease. When nothing is at stake
-- (no lease, no live node) the clock catches up with Redis's own.

local function served_now()
  local c = redis.call('HMGET', K.clock, 'served_ms', 'last_ms')
  local served, last = tonumber(c[1]), tonumber(c[2])
  if not served or not last then return NOW end
  local gap = math.max(0, NOW - last)
  if gap > SERVED_GAP_MAX_MS
      and (redis.call('ZCARD', K.leases) > 0 or redis.call('ZCARD', K.nodes) > 0) then
    gap = SERVED_GAP_MAX_MS
  end
  return served + gap
end

local function advance_served_clock()
  local served = served_now()
  redis.call('HSET', K.clock, 'served_ms', served, 'last_ms', NOW)
  return served
end

-- Queues ---------------------------------------------------------------------------------

local function ring(queue)
  local bell = k_bell(queue)
  safe('LPUSH', bell, '1')
  redis.call('LTRIM', bell, 0, BELL_MAX - 1)
end

-- A queue that already held work has no idle worker to wake: a worker only sleeps after a
-- claim found its queues empty, and a claim that leaves work behind rings for the next one.
local function enqueue(id, queue, front)
  local cmd = 'LPUSH'
  if front then cmd = 'RPUSH' end
  if safe(cmd, k_queue(queue), id) == 1 then ring(queue) end
end

-- Transitions ------------------------------------------------------------------------------
-- The helpers below take ids whose task hash the caller has read (so it is a hash).

local function record_attempt(id, state, error_type, message)
  local t = redis.call('HMGET', k_task(id), 'attempt', 'node_id', 'worker_id', 'start_ms')
  safe('RPUSH', k_attempts(id), cjson.encode({
    attempt_number = tonumber(t[1]) or 0, state = state,
    node_id = t[2] or '', worker_id = t[3] or '',
    error_type = error_type, error_message = string.sub(message, 1, MESSAGE_MAX),
    start_ms = tonumber(t[4]) or NOW, end_ms = NOW}))
end

-- Per-minute counters of finished tasks, retries and failures, for `ftqueue status` and
-- the dashboard's charts.
local function count_recent(field)
  local key = k_stats_minute(math.floor(NOW / MINUTE_MS))
  safe('HINCRBY', key, field, 1)
  redis.call('EXPIRE', key, STATS_MINUTE_TTL_S)
end

local function release_lease(id, node_id)
  redis.call('ZREM', K.leases, id)
  if node_id and node_id ~= '' then safe('SREM', k_node_tasks(node_id), id) end
end

-- The submitter's notice of a small successful result carries the result itself
-- ("<id>\n<blob>"), so its `get` needs no further round trip; everyone else gets the id.
local function notify(id, inline_blob)
  local n = redis.call('HGET', k_task(id), 'notify')
  if n and n ~= '' then
    if inline_blob and #inline_blob <= INLINE_RESULT_MAX then
      safe('RPUSH', n, id .. '\n' .. inline_blob)
    else
      safe('RPUSH', n, id)
    end
    redis.call('EXPIRE', n, NOTIFY_TTL_S)
  end
  local wkey = k_waiters(id)
  local waiters = safe('SMEMBERS', wkey)
  for _, w in ipairs(waiters) do
    safe('RPUSH', w, id)
    redis.call('EXPIRE', w, NOTIFY_TTL_S)
  end
  if #waiters > 0 then redis.call('DEL', wkey) end
end

local function release_dependents(id)
  local dkey = k_dependents(id)
  local deps = safe('SMEMBERS', dkey)
  for _, d in ipairs(deps) do
    local dk = k_task(d)
    local t = guarded('HMGET', dk, 'among the dependents of ' .. id, 'state', 'queue')
    if t and redis.call('HINCRBY', dk, 'deps', -1) <= 0 and t[1] == 'PENDING_ARGS_AVAIL' then
      redis.call('HSET', dk, 'state', 'PENDING_NODE_ASSIGNMENT')
      enqueue(d, t[2], false)
    end
  end
  if #deps > 0 then redis.call('DEL', dkey) end
end

-- Retention starts when a task ends: its result (or error) lives result_ttl_s, its lineage
-- (record, arguments, attempts, children) lineage_ttl_s, so a lost result can be rebuilt.
local function set_retention(id)
  local t = redis.call('HMGET', k_task(id), 'result_ttl_s', 'lineage_ttl_s')
  local result_ttl, lineage_ttl = tonumber(t[1]) or 0, tonumber(t[2]) or 0
  if result_ttl > 0 then redis.call('EXPIRE', k_result(id), result_ttl) end
  if lineage_ttl > 0 then
    for _, key in ipairs({k_task(id), k_args(id), k_attempts(id), k_children(id)}) do
      redis.call('EXPIRE', key, lineage_ttl)
    end
  end
end

-- The final attempt stays in the task hash (state, node, worker, times, error); only the
-- attempts that ended in a retry are appended to the attempts list.
local function finish(id, state, error_type, message, result_blob)
  local tkey = k_task(id)
  local node_id = redis.call('HGET', tkey, 'node_id')
  redis.call('HSET', tkey, 'state', state, 'end_ms', NOW, 'error_type', error_type,
             'error_message', string.sub(message, 1, MESSAGE_MAX))
  release_lease(id, node_id)
  local stat = 'tasks:' .. state
  if error_type ~= '' then stat = stat .. ':' .. error_type end
  redis.call('HINCRBY', K.stats, stat, 1)
  if state == 'FAILED' then
    redis.call('ZADD', K.failed_index, NOW, id)
    count_recent('failed:' .. error_type)
  else
    count_recent('finished')
  end
  notify(id, result_blob)
  release_dependents(id)
  set_retention(id)
end

local function budget_left(id)
  local t = redis.call('HMGET', k_task(id), 'max_retries', 'retries')
  local max_retries = tonumber(t[1]) or 0
  return max_retries == -1 or (tonumber(t[2]) or 0) < max_retries
end

-- Back to the queue's front for a new attempt; `charge` says whether it uses the retry budget.
local function retry(id, error_type, message, charge)
  local tkey = k_task(id)
  local t = redis.call('HMGET', tkey, 'node_id', 'queue')
  record_attempt(id, 'FAILED', error_type, message)
  release_lease(id, t[1])
  redis.call('HINCRBY', tkey, 'attempt', 1)
  if charge then redis.call('HINCRBY', tkey, 'retries', 1) end
  redis.call('HSET', tkey, 'state', 'PENDING_NODE_ASSIGNMENT')
  redis.call('HDEL', tkey, 'node_id', 'worker_id', 'start_ms', 'error_type', 'error_message')
  enqueue(id, t[2], true)
  redis.call('HINCRBY', K.stats, 'retries:' .. error_type, 1)
  redis.call('ZADD', K.failed_index, NOW, id)    -- it has a FAILED attempt row now
  count_recent('retries:' .. error_type)
end

-- A prefetched task that never started goes back unchanged: same attempt, nothing charged.
local function requeue_unstarted(id)
  local tkey = k_task(id)
  local t = redis.call('HMGET', tkey, 'node_id', 'queue')
  release_lease(id, t[1])
  redis.call('HSET', tkey, 'state', 'PENDING_NODE_ASSIGNMENT')
  redis.call('HDEL', tkey, 'node_id', 'worker_id', 'start_ms')
  enqueue(id, t[2], true)
end

-- The attempt holding the task was lost (worker or node died, or stopped on purpose).
-- `started`: the task was running (else it was only prefetched and goes back unchanged);
-- `charge`: the loss uses the retry budget. Callers have checked ownership.
local function fail_attempt(id, started, error_type, message, charge)
  if redis.call('HGET', k_task(id), 'cancel') then
    finish(id, 'FAILED', 'TASK_CANCELLED', 'cancelled; its attempt was lost: ' .. message)
    return 'cancelled'
  end
  if not started then
    requeue_unstarted(id)
    return 'released'
  end
  if not charge then
    retry(id, error_type, message, false)
    return 'requeued'
  end
  if budget_left(id) then
    retry(id, error_type, message, true)
    return 'retried'
  end
  finish(id, 'FAILED', error_type, message)
  return 'failed'
end
