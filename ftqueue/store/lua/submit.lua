-- Submit a batch of tasks (idempotent: a task id that exists is left alone).
-- ARGV: prefix, now_ms, n, then n records of 5: task_id, queue, args_blob, deps_csv, fields_json
-- Returns: the number of tasks created.
local n = tonumber(ARGV[3])
local created = 0
for i = 0, n - 1 do
  local b = 4 + i * 5
  local id, queue, blob, deps, fields = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local tkey = k_task(id)
  if redis.call('EXISTS', tkey) == 0 then
    local flat = {}
    for key, value in pairs(cjson.decode(fields)) do
      flat[#flat + 1] = key
      flat[#flat + 1] = value
    end
    redis.call('HSET', tkey, 'attempt', 0, 'retries', 0, 'fence', 0, 'queue', queue,
               'created_ms', NOW, unpack(flat))
    redis.call('SET', k_args(id), blob)
    redis.call('ZADD', P .. ':index:tasks', NOW, id)
    local parent = redis.call('HGET', tkey, 'parent_task_id')
    if parent and parent ~= '' then redis.call('SADD', P .. ':children:' .. parent, id) end
    redis.call('SADD', P .. ':queues', queue)
    local pending = 0
    if deps ~= '' then redis.call('HSET', tkey, 'dep_ids', deps) end
    for dep in string.gmatch(deps, '[^,]+') do
      local state = redis.call('HGET', k_task(dep), 'state')
      if state and not TERMINAL[state] then
        redis.call('SADD', P .. ':dependents:' .. dep, id)
        pending = pending + 1
      end
    end
    if pending > 0 then
      redis.call('HSET', tkey, 'state', 'PENDING_ARGS_AVAIL', 'deps', pending)
    else
      redis.call('HSET', tkey, 'state', 'PENDING_NODE_ASSIGNMENT')
      enqueue(id, queue, false)
    end
    created = created + 1
  end
end
return created
