-- Submit a batch of tasks (idempotent: a task id that exists is left alone; its new
-- submitter is registered for its completion notice).
--
-- KEYS[1] queues
-- KEYS[2] task_index
-- KEYS[3] stats
-- KEYS[4] corrupt
-- KEYS[NK+2i-1], KEYS[NK+2i]: task(task_id), args(task_id) of record i
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3] n, then from ARGV[4] n records of 5: task_id, queue, args_blob, deps_csv, fields_json
--         (fields `delay_ms` or `eta_ms` make the record's `due_ms`: DELAYED until then)
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

local function create(tkey, akey, id, queue, blob, deps, fields)
  local flat = {}
  local given = cjson.decode(fields)
  -- delay_ms (from now, on Redis's clock) or eta_ms (epoch) become the record's due_ms.
  local due = tonumber(given.eta_ms)
  if given.delay_ms then due = NOW + tonumber(given.delay_ms) end
  given.delay_ms, given.eta_ms = nil, nil
  if due then given.due_ms = tostring(due) end
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
  if deps ~= '' then redis.call('HSET', tkey, 'dep_ids', deps) end
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
