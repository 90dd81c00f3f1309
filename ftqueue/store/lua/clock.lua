-- Read the served clock without advancing it, and a node's last heartbeat on it (so that a
-- health check compares like with like: heartbeats are kept in served time).
--
-- KEYS[1] clock
-- KEYS[2] leases          read by the served clock
-- KEYS[3] nodes           node id -> last heartbeat (served ms)
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3] node_id or ''
-- Returns: {served now (ms), the node's last heartbeat (served ms) or ''}
local heartbeat = ''
if ARGV[3] ~= '' then heartbeat = redis.call('ZSCORE', K.nodes, ARGV[3]) or '' end
return reply({served_now(), heartbeat})
