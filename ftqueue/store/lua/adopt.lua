-- Partitions (ftqueue/partitions.py): tasks submitted (with task_id=) by a running task that
-- lives in another partition become its children here, as lib.lua create does in one
-- partition, so a recursive cancel finds them (ftqueue/store/store.py cancel follows them
-- to their own partitions). Idempotent (a set member).
--
-- KEYS[1] stats
-- KEYS[2] corrupt
-- KEYS[3] task(parent)
-- KEYS[4] children(parent)
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3..] the children's ids
-- Returns: 'ok' | 'gone' (no parent here: no set, nothing would expire it)
local pstate = guarded('HGET', K.task, 'as the parent of a task in another partition', 'state')
if not pstate then return reply('gone') end
for i = 3, #ARGV do safe('SADD', K.children, ARGV[i]) end
redis.call('HSET', K.task, 'children', '1')
if TERMINAL[pstate] then
  local ttl = redis.call('PTTL', K.task)
  if ttl > 0 then redis.call('PEXPIRE', K.children, ttl) end
end
return reply('ok')
