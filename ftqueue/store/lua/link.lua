-- Partitions (ftqueue/partitions.py): tasks of other partitions wait for these, which live
-- here. Each one not final yet gets the member '@<partition>' among its dependents, so its
-- end goes to this partition's outbox for that one (lib.lua release_dependents).
-- Idempotent (a set member): also what a sweep runs again for a mirror pending long.
--
-- KEYS[1] stats
-- KEYS[2] corrupt
-- KEYS[NK+2i-1], KEYS[NK+2i]: task(id), dependents(id) of the i-th pair
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3..] pairs: id, the partition whose tasks wait for it
-- Returns: per pair 'linked' | 'final' (ended already, or corrupt: the waiting task finds
--          out reading it) | 'gone' (no record)
local out = {}
for i = 3, #ARGV, 2 do
  local n = (i - 1) / 2
  local tkey, dkey = KEYS[NK + 2 * n - 1], KEYS[NK + 2 * n]
  local state = guarded('HGET', tkey, 'as a dependency in another partition', 'state')
  if state and not TERMINAL[state] then
    safe('SADD', dkey, '@' .. ARGV[i + 1])
    redis.call('HSET', tkey, 'dependents', '1')
    out[n] = 'linked'
  elseif not state and redis.call('EXISTS', tkey) == 0 then
    out[n] = 'gone'
  else
    out[n] = 'final'
  end
end
return reply(out)
