-- Partitions (ftqueue/partitions.py): tasks of another partition will wait for these, which
-- live here. Each one not final yet gets the member '@<partition>' among its dependents, so
-- its end goes to this partition's outbox for that one (lib.lua release_dependents).
-- Idempotent (a set member).
--
-- KEYS[1] stats
-- KEYS[2] corrupt
-- KEYS[NK+2i-1], KEYS[NK+2i]: task(id), dependents(id) of the i-th id
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3] the waiting partition, then the ids
-- Returns: per id 'linked' | 'final' (ended already, or gone, or corrupt: the waiting task
--          finds out reading it)
local member = '@' .. ARGV[3]
local out = {}
for i = 4, #ARGV do
  local tkey, dkey = KEYS[NK + 2 * (i - 3) - 1], KEYS[NK + 2 * (i - 3)]
  local state = guarded('HGET', tkey, 'as a dependency in another partition', 'state')
  if state and not TERMINAL[state] then
    safe('SADD', dkey, member)
    redis.call('HSET', tkey, 'dependents', '1')
    out[#out + 1] = 'linked'
  else
    out[#out + 1] = 'final'
  end
end
return reply(out)
