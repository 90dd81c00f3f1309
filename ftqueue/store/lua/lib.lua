-- Shared helpers, prepended to every script at load time (never run on its own).
-- Every script takes ARGV[1] = key prefix (the namespace) and ARGV[2] = now in ms;
-- its own arguments start at ARGV[3]. Keys are built here from the prefix, exactly as
-- ftqueue/keys.py builds them (see docs/redis-layout.md).
local P = ARGV[1]
-- Time comes from Redis itself unless a caller (a test's fake clock) passes it: leases must
-- not depend on the clocks of the hosts that run nodes and drivers.
local NOW = tonumber(ARGV[2])
if not NOW then
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local NOTIFY_TTL_S = 86400          -- settings.DEFAULT_NOTIFY_TTL_S
local DEAD_NODE_TTL_S = 86400
local MESSAGE_MAX = 2000            -- settings.ATTEMPT_MESSAGE_MAX_CHARS
local INLINE_RESULT_MAX = 16384     -- settings.INLINE_RESULT_MAX_BYTES
local TERMINAL = {FINISHED = true, FAILED = true}
local ACTIVE = {SUBMITTED_TO_WORKER = true, RUNNING = true}

local function k_task(id) return P .. ':task:' .. id end
local function k_args(id) return P .. ':args:' .. id end
local function k_result(id) return P .. ':result:' .. id end

local function ring(queue)
  local bell = P .. ':bell:' .. queue
  redis.call('LPUSH', bell, '1')
  redis.call('LTRIM', bell, 0, 999)
end

-- A queue that already held work has no idle worker to wake: a worker only sleeps after a
-- claim found its queues empty, and a claim that leaves work behind rings for the next one.
local function enqueue(id, queue, front)
  local q = P .. ':queue:' .. queue
  local len
  if front then len = redis.call('RPUSH', q, id) else len = redis.call('LPUSH', q, id) end
  if len == 1 then ring(queue) end
end

local function record_attempt(id, state, error_type, message)
  local t = redis.call('HMGET', k_task(id), 'attempt', 'node_id', 'worker_id', 'start_ms')
  redis.call('RPUSH', P .. ':attempts:' .. id, cjson.encode({
    attempt_number = tonumber(t[1]) or 0, state = state,
    node_id = t[2] or '', worker_id = t[3] or '',
    error_type = error_type, error_message = string.sub(message, 1, MESSAGE_MAX),
    start_ms = tonumber(t[4]) or NOW, end_ms = NOW}))
end

-- Per-minute counters of retries and failures, for `ftqueue status` (kept an hour).
local function count_recent(field)
  local key = P .. ':stats:minute:' .. math.floor(NOW / 60000)
  redis.call('HINCRBY', key, field, 1)
  redis.call('EXPIRE', key, 3600)
end

local function release_lease(id, node_id)
  redis.call('ZREM', P .. ':leases', id)
  if node_id and node_id ~= '' then redis.call('SREM', P .. ':node_tasks:' .. node_id, id) end
end

-- The submitter's notice of a small successful result carries the result itself
-- ("<id>\n<blob>"), so its `get` needs no further round trip; everyone else gets the id.
local function notify(id, inline_blob)
  local n = redis.call('HGET', k_task(id), 'notify')
  if n and n ~= '' then
    if inline_blob and #inline_blob <= INLINE_RESULT_MAX then
      redis.call('RPUSH', n, id .. '\n' .. inline_blob)
    else
      redis.call('RPUSH', n, id)
    end
    redis.call('EXPIRE', n, NOTIFY_TTL_S)
  end
  local wkey = P .. ':waiters:' .. id
  local waiters = redis.call('SMEMBERS', wkey)
  for _, w in ipairs(waiters) do
    redis.call('RPUSH', w, id)
    redis.call('EXPIRE', w, NOTIFY_TTL_S)
  end
  if #waiters > 0 then redis.call('DEL', wkey) end
end

local function release_dependents(id)
  local dkey = P .. ':dependents:' .. id
  local deps = redis.call('SMEMBERS', dkey)
  for _, d in ipairs(deps) do
    local dk = k_task(d)
    if redis.call('HINCRBY', dk, 'deps', -1) <= 0 then
      local t = redis.call('HMGET', dk, 'state', 'queue')
      if t[1] == 'PENDING_ARGS_AVAIL' then
        redis.call('HSET', dk, 'state', 'PENDING_NODE_ASSIGNMENT')
        enqueue(d, t[2], false)
      end
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
    for _, key in ipairs({k_task(id), k_args(id), P .. ':attempts:' .. id,
                          P .. ':children:' .. id}) do
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
  redis.call('HINCRBY', P .. ':stats', stat, 1)
  if state == 'FAILED' then
    redis.call('ZADD', P .. ':index:failed', NOW, id)
    count_recent('failed:' .. error_type)
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
  redis.call('HINCRBY', P .. ':stats', 'retries:' .. error_type, 1)
  redis.call('ZADD', P .. ':index:failed', NOW, id)    -- it has a FAILED attempt row now
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
