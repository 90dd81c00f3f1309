-- A running task blocked in `get`/`wait` lends its CPUs to its node while it waits, as in
-- Ray (so the tasks it waits for can run there), and takes them back when it goes on (the
-- node may then run over its CPUs for a moment). GPUs and the rest stay held.
--
-- KEYS[1] stats
-- KEYS[2] corrupt
-- KEYS[3] task(task_id)
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3] task_id         ARGV[4] lend ('1': blocked | '0': going on)
-- Returns: 'lent' | 'taken back' | 'unchanged'
local t = guarded('HMGET', K.task, 'by a blocked task', 'held', 'shape', 'lent')
if not t or not t[1] then return reply('unchanged') end
local cpu = shape_units(t[2]).CPU
local fkey = k_node_free(t[1])
sound_free(fkey)
if not cpu or redis.call('EXISTS', fkey) == 0 then return reply('unchanged') end
if ARGV[4] == '1' and not t[3] then
  redis.call('HINCRBY', fkey, 'CPU', cpu)
  redis.call('HSET', K.task, 'lent', '1')
  if redis.call('HDEL', fkey, BLOCKED_FLAG) == 1 then ring('@' .. t[1]) end
  return reply('lent')
end
if ARGV[4] == '0' and t[3] then
  redis.call('HINCRBY', fkey, 'CPU', -cpu)
  redis.call('HDEL', K.task, 'lent')
  return reply('taken back')
end
return reply('unchanged')
