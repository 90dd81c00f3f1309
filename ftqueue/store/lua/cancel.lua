-- Cancel a task (and, when recursive, the tasks it submitted). Not started: it fails now as
-- TASK_CANCELLED and never runs. Running: the request is recorded on the task (so a commit,
-- a crash or a lost lease all end as TASK_CANCELLED, never retried) and relayed to its
-- node, whose supervisor interrupts the worker (or kills it when forced; a forced cancel
-- fails the task at once).
-- ARGV: prefix, now_ms, task_id, force ('1' | '0'), recursive ('1' | '0')
-- Returns: {task_id, outcome, ...}; outcome 'cancelled' | 'requested' | 'final' | 'missing'
local force, recursive = ARGV[4] == '1', ARGV[5] == '1'
local out = {}
local todo, seen, i = {ARGV[3]}, {}, 1
while i <= #todo do
  local id = todo[i]
  i = i + 1
  if not seen[id] then
    seen[id] = true
    local tkey = k_task(id)
    local t = redis.call('HMGET', tkey, 'state', 'node_id')
    local state, outcome = t[1], nil
    if not state then
      outcome = 'missing'
    elseif TERMINAL[state] then
      outcome = 'final'
    elseif ACTIVE[state] then
      local mode = 'interrupt'
      if force then mode = 'force' end
      redis.call('HSET', tkey, 'cancel', mode)
      local relay = P .. ':cancel:' .. (t[2] or '')
      redis.call('RPUSH', relay, id .. ' ' .. mode)
      redis.call('EXPIRE', relay, NOTIFY_TTL_S)
      if force or state == 'SUBMITTED_TO_WORKER' then
        finish(id, 'FAILED', 'TASK_CANCELLED', 'cancelled')
      end
      outcome = 'requested'
    else
      finish(id, 'FAILED', 'TASK_CANCELLED', 'cancelled before it ran')
      outcome = 'cancelled'
    end
    out[#out + 1] = id
    out[#out + 1] = outcome
    if recursive and state then
      for _, child in ipairs(redis.call('SMEMBERS', P .. ':children:' .. id)) do
        todo[#todo + 1] = child
      end
    end
  end
end
return out
