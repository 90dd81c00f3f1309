-- Fire one tick of a schedule, exactly once for the whole cluster: only the caller that saw
-- the schedule's current next tick (`expected_ms`) advances it, and the tick's task id is
-- derived from the schedule's name and the tick, so a tick never makes two tasks.
--
-- KEYS[1] schedules       name -> next tick (epoch ms)
-- KEYS[2] queues
-- KEYS[3] task_index
-- KEYS[4] stats
-- KEYS[5] corrupt
-- KEYS[6] schedule(sched)
-- KEYS[7] task(task_id)   the tick's task
-- KEYS[8] args(task_id)
-- KEYS[9] nodes           for a tick task with a scheduling strategy (lib.lua create)
-- KEYS[10] spread
-- KEYS[11] leases
-- KEYS[12] failed_index
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3] name            ARGV[4] expected_ms (the next tick the caller read)
-- ARGV[5] next_ms (the tick after this one)
-- ARGV[6] task_id ('' : no task for this tick, e.g. a missed tick with catchup "none")
-- ARGV[7] queue           ARGV[8] args_blob       ARGV[9] fields_json
-- ARGV[10] tick_ms (the tick fired: the expected one, or the latest missed one)
-- Returns: 'fired' | 'skipped' (advanced, no task) | 'raced' (someone else advanced it, or it
--          was replaced or removed)
local name, expected, next_ms, id = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local t = guarded('HMGET', K.schedule, 'by a schedule tick', 'next_ms')
if not t or t[1] ~= expected then return reply('raced') end
redis.call('HSET', K.schedule, 'next_ms', next_ms)
redis.call('ZADD', K.schedules, next_ms, name)
if id == '' then return reply('skipped') end
if redis.call('EXISTS', K.task) == 0 then
  create(K.task, K.args, id, ARGV[7], ARGV[8], '', ARGV[9])
  count_created()
end
redis.call('HSET', K.schedule, 'last_tick_ms', ARGV[10], 'last_task_id', id)
return reply('fired')
