-- Partitions (ftqueue/partitions.py): the mirror, in this partition, of a task that lives
-- in another, for the tasks here that wait for it (lib.lua wait_for reads its state, and
-- registers them among its dependents here). Pending: created if there is none (never made
-- pending again). Ended: marked final and its dependents here released, once; created final
-- if there is none (its end arrived before the waiting task was submitted). A final mirror
-- reads FAILED with `mirror` set, so that reconstruct.lua leaves it alone: a waiting task
-- reads the real one where it lives. Idempotent: the outbox may deliver an end twice.
--
-- KEYS[1] queues
-- KEYS[2] task_index
-- KEYS[3] stats
-- KEYS[4] corrupt
-- KEYS[5] nodes           (lib.lua enqueue, for a task its end makes ready)
-- KEYS[6] spread
-- KEYS[7] leases
-- KEYS[8] failed_index
-- KEYS[NK+2i-1], KEYS[NK+2i]: task(id), dependents(id) of the i-th id
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3..] pairs: id, '1' (it ended) | '0' (pending)
-- Returns: the number of mirrors that ended here
local ended = 0
for i = 3, #ARGV, 2 do
  local n = (i - 1) / 2
  local tkey = KEYS[NK + 2 * n - 1]
  local id, final = ARGV[i], ARGV[i + 1] == '1'
  local t = guarded('HMGET', tkey, 'as the mirror of a task in another partition', 'state',
                    'dependents')
  if t then
    if not final then
      if not t[1] then redis.call('HSET', tkey, 'state', MIRROR_PENDING, 'mirror', '1') end
    elseif not t[1] or t[1] == MIRROR_PENDING then
      redis.call('HSET', tkey, 'state', 'FAILED', 'mirror', '1', 'end_ms', NOW)
      redis.call('EXPIRE', tkey, MIRROR_TTL_S)
      release_dependents(id, t[2])
      ended = ended + 1
    end
  end
end
return reply(ended)
