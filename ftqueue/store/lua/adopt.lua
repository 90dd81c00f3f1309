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
add_children(K.task, K.children, pstate, {unpack(ARGV, 3)})
return reply('ok')
