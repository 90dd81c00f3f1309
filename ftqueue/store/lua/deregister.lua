-- A node leaves on purpose: it is marked DEAD (its record kept DEAD_NODE_TTL_S), drops out
-- of the live nodes, and the tasks pinned to it go elsewhere (lib.lua unpin: a soft pin to
-- any node, a hard one to fail as unschedulable).
--
-- KEYS[1] nodes
-- KEYS[2] stats
-- KEYS[3] corrupt
-- KEYS[4] node(node_id)
-- KEYS[5] leases          (a task queued here may fail: lib.lua enqueue)
-- KEYS[6] failed_index
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3] node_id
-- Returns: 'ok'
local node = ARGV[3]
safe('HSET', K.node, 'state', 'DEAD', 'end_ms', NOW)
redis.call('ZREM', K.nodes, node)
redis.call('EXPIRE', K.node, DEAD_NODE_TTL_S)
unpin(node)
return reply('ok')
