-- Submit a batch of tasks (idempotent: a task id that exists is left alone; its new
-- submitter is registered for its completion notice).
--
-- KEYS[1] queues
-- KEYS[2] task_index
-- KEYS[3] stats
-- KEYS[4] corrupt
-- KEYS[5] nodes           live nodes, for scheduling strategies
-- KEYS[6] spread          round-robin counter of SPREAD
-- KEYS[7] leases          (a task that cannot be placed fails at once: finish touches these)
-- KEYS[8] failed_index
-- KEYS[NK+2i-1], KEYS[NK+2i]: task(task_id), args(task_id) of record i
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3] n, then from ARGV[4] n records of 5: task_id, queue, args_blob, deps_csv, fields_json
--         (fields `delay_ms` or `eta_ms` make the record's `due_ms`: DELAYED until then;
--         `strategy` SPREAD | node:<id> | soft:<id> becomes the record's `pin`, see place())
-- Returns: the number of tasks created.

-- How many of deps are not final yet; the task is registered as a dependent of each. A
-- corrupt dependency counts as final: the task then fails on reading it, where it is seen.
local function wait_for(id, deps)
  local pending = 0
  for dep in string.gmatch(deps, '[^,]+') do
    local state = guarded('HGET', k_task(dep), 'as a dependency of ' .. id, 'state')
    if state and not TERMINAL[state] then
      safe('SADD', k_dependents(dep), id)
      pending = pending + 1
    end
  end
  return pending
end

-- Whether a live node serves `queue` and can ever fit `shape` (its total resources).
local function can_host(node, queue, shape)
  local n = redis.call('HMGET', k_node(node), 'queues', 'resources')
  if not n[1] or not string.find(',' .. n[1] .. ',', ',' .. queue .. ',', 1, true) then
    return false
  end
  local total = cjson.decode(n[2] or '{}')
  for name, units in pairs(shape_units(shape)) do
    if (tonumber(total[name]) or 0) < units then return false end
  end
  return true
end

-- A scheduling strategy as a pin: SPREAD pins to the live nodes in turn (softly), node
-- affinity to its node. Returns false when a hard affinity names a node that cannot run it.
local function place(tkey, strategy, queue, shape)
  if strategy == 'SPREAD' then
    local n = redis.call('ZCARD', K.nodes)
    local start = redis.call('INCR', K.spread)
    for j = 0, n - 1 do
      local node = redis.call('ZRANGE', K.nodes, (start + j) % n, (start + j) % n)[1]
      if node and can_host(node, queue, shape) then
        redis.call('HSET', tkey, 'pin', node, 'pin_soft', '1')
        return true
      end
    end
    return true
  end
  local kind, node = string.match(strategy, '^(%a+):(.+)$')
  if node and redis.call('ZSCORE', K.nodes, node) and can_host(node, queue, shape) then
    local soft = '0'
    if kind == 'soft' then soft = '1' end
    redis.call('HSET', tkey, 'pin', node, 'pin_soft', soft)
    return true
  end
  return kind == 'soft'     -- soft falls back to any node
end

local function create(tkey, akey, id, queue, blob, deps, fields)
  local flat = {}
  local given = cjson.decode(fields)
  -- delay_ms (from now, on Redis's clock) or eta_ms (epoch) become the record's due_ms.
  local due = tonumber(given.eta_ms)
  if given.delay_ms then due = NOW + tonumber(given.delay_ms) end
  given.delay_ms, given.eta_ms = nil, nil
  if due then given.due_ms = tostring(due) end
  local strategy = given.strategy
  given.strategy = nil
  for key, value in pairs(given) do
    flat[#flat + 1] = key
    flat[#flat + 1] = value
  end
  redis.call('HSET', tkey, 'attempt', 0, 'retries', 0, 'fence', 0, 'queue', queue,
             'created_ms', NOW, unpack(flat))
  redis.call('SET', akey, blob)
  redis.call('ZADD', K.task_index, NOW, id)
  local parent = redis.call('HGET', tkey, 'parent_task_id')
  if parent and parent ~= '' then safe('SADD', k_children(parent), id) end
  redis.call('SADD', K.queues, queue)
  if given.shape then safe('SADD', k_shapes(queue), given.shape) end
  if deps ~= '' then redis.call('HSET', tkey, 'dep_ids', deps) end
  if strategy and not place(tkey, strategy, queue, given.shape) then
    finish(id, 'FAILED', 'TASK_UNSCHEDULABLE_ERROR', 'no live node ' .. strategy ..
           ' can run it (NodeAffinitySchedulingStrategy with soft=False)')
    return
  end
  local pending = wait_for(id, deps)
  if pending > 0 then
    redis.call('HSET', tkey, 'state', 'PENDING_ARGS_AVAIL', 'deps', pending)
  else
    make_ready(id, queue, false)
  end
end

-- A task id that exists (an idempotent submit, `task_id=`): nothing is submitted, but this
-- submitter is told when it ends, as if it had submitted it.
local function attach(tkey, id, fields)
  local n = cjson.decode(fields).notify
  local t = guarded('HMGET', tkey, 'by a submit of the same id', 'state', 'notify')
  if not t or not n or n == '' or n == t[2] then return end
  if TERMINAL[t[1]] then
    safe('RPUSH', n, id)
    redis.call('EXPIRE', n, NOTIFY_TTL_S)
  else
    safe('SADD', k_waiters(id), n)
  end
end

local created = 0
for i = 1, tonumber(ARGV[3]) do
  local b, k = 4 + (i - 1) * 5, NK + 2 * i - 1
  if redis.call('EXISTS', KEYS[k]) == 0 then
    create(KEYS[k], KEYS[k + 1], ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4])
    created = created + 1
  else
    attach(KEYS[k], ARGV[b], ARGV[b + 4])
  end
end
return reply(created)
