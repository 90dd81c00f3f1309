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
--         `strategy` SPREAD | node:<id> | soft:<id> becomes the record's `pin`, lib.lua place)
-- Returns: the number of tasks created.

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
    redis.call('HSET', tkey, 'waited', '1')    -- finish looks for waiters only then
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
count_created()
return reply(created)
