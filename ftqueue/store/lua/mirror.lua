-- Partitions (ftqueue/partitions.py): the mirror, in this partition, of a task that lives
-- in another, for the tasks here that wait for it (lib.lua wait_for reads its state, and
-- registers them among its dependents here). Pending: created if there is none (never made
-- pending again), and indexed in `mirrors` so that a sweep links it again when it stays
-- pending long (its task's partition may have lost the link). Ended: marked final and its
-- dependents here released, once; created final if there is none (its end arrived before
-- the waiting task was submitted). A final mirror reads FAILED with `mirror` set, so that
-- reconstruct.lua leaves it alone: a waiting task reads the real one where it lives. It
-- is kept as long as the longest lineage TTL of the tasks that waited for it (0: for good),
-- so a rebuild of theirs finds it. Idempotent: the outbox may deliver an end twice.
--
-- KEYS[1] queues
-- KEYS[2] task_index
-- KEYS[3] stats
-- KEYS[4] corrupt
-- KEYS[5] nodes           (lib.lua enqueue, for a task its end makes ready)
-- KEYS[6] spread
-- KEYS[7] leases
-- KEYS[8] failed_index
-- KEYS[9] mirrors         pending mirror id -> when it was last linked (Redis ms)
-- KEYS[NK+2i-1], KEYS[NK+2i]: task(id), dependents(id) of the i-th triple
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3..] triples: id, '1' (it ended) | '0' (pending), lineage TTL (s) of a task that
--           waits for it ('': none known)
-- Returns: the number of mirrors that ended here
local function longer(a, b)
  if a == nil then return b end
  if b == nil or a == 0 or b == 0 then
    if a == 0 or b == 0 then return 0 end
    return a
  end
  return math.max(a, b)
end

local ended = 0
for i = 3, #ARGV, 3 do
  local n = (i / 3)
  local tkey = KEYS[NK + 2 * n - 1]
  local id, final, ttl = ARGV[i], ARGV[i + 1] == '1', tonumber(ARGV[i + 2])
  local t = guarded('HMGET', tkey, 'as the mirror of a task in another partition', 'state',
                    'dependents', 'lineage_ttl_s')
  if t then
    local keep = longer(tonumber(t[3]), ttl)
    if not final then
      if not t[1] then
        redis.call('HSET', tkey, 'state', MIRROR_PENDING, 'mirror', '1')
        redis.call('ZADD', K.mirrors, NOW, id)
      end
      if keep and keep ~= tonumber(t[3]) then redis.call('HSET', tkey, 'lineage_ttl_s', keep) end
    elseif not t[1] or t[1] == MIRROR_PENDING then
      redis.call('HSET', tkey, 'state', 'FAILED', 'mirror', '1', 'end_ms', NOW)
      keep = keep or MIRROR_TTL_S
      if keep > 0 then redis.call('EXPIRE', tkey, keep) end
      redis.call('ZREM', K.mirrors, id)
      release_dependents(id, t[2])
      ended = ended + 1
    end
  end
end
return reply(ended)
