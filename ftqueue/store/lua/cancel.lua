-- Cancel a task (and, when recursive, the tasks it submitted). Not started: it fails now as
-- TASK_CANCELLED and never runs. Running: the request is recorded on the task (so a commit,
-- a crash or a lost lease all end as TASK_CANCELLED, never retried) and relayed to its
-- node, whose supervisor interrupts the worker (or kills it when forced; a forced cancel
-- fails the task at once). A corrupt record is skipped, with the tasks below it.
--
-- KEYS[1] leases
-- KEYS[2] stats
-- KEYS[3] failed_index
-- KEYS[4] corrupt
-- KEYS[5] task(task_id)   the task named; the ones found below it are built at run time
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3] task_id         ARGV[4] force ('1' | '0')    ARGV[5] recursive ('1' | '0')
-- Returns: {task_id, outcome, ...}; outcome 'cancelled' | 'requested' | 'final' | 'missing'
--          | 'corrupt'
local root, force, recursive = ARGV[3], ARGV[4] == '1', ARGV[5] == '1'

local function task_key(id)
  if id == root then return K.task end
  return k_task(id)
end

local function request(id, tkey, state, node_id)
  local mode = 'interrupt'
  if force then mode = 'force' end
  redis.call('HSET', tkey, 'cancel', mode)
  -- Each request numbered: the node delivers each once, whether the relay or its heartbeat
  -- (renew.lua) brings it first.
  local n = redis.call('HINCRBY', tkey, 'cancel_n', 1)
  local relay = k_cancel(node_id or '')
  safe('RPUSH', relay, id .. ' ' .. mode .. ' ' .. n)
  redis.call('EXPIRE', relay, NOTIFY_TTL_S)
  if force or state == 'SUBMITTED_TO_WORKER' then
    finish(id, 'FAILED', 'TASK_CANCELLED', 'cancelled')
  end
end

-- Returns the outcome and whether the task exists (so its children are visited).
local function cancel_one(id)
  local tkey = task_key(id)
  local t = guarded('HMGET', tkey, 'by a cancel', 'state', 'node_id', 'queue', 'limit_key',
                    'mirror')
  if not t then return 'corrupt', false end
  local state = t[1]
  -- A mirror (ftqueue/partitions.py) stands for a task of another partition: the caller
  -- cancels that one where it lives, as a task missing here.
  if not state or t[5] then return 'missing', false end
  if TERMINAL[state] then return 'final', true end
  if ACTIVE[state] then
    request(id, tkey, state, t[2])
    return 'requested', true
  end
  -- Out of its queue now, so queue depths count only what will run (O(queue length)).
  if state == 'PENDING_NODE_ASSIGNMENT' and t[3] then
    safe('LREM', k_queue(slot_of(id, t[3])), 1, id)
  end
  if state == 'DELAYED' and t[3] then safe('ZREM', k_delayed(t[3]), id) end
  if state == 'PENDING_NODE_ASSIGNMENT' and t[4] then safe('LREM', k_limit_waiting(t[4]), 1, id) end
  finish(id, 'FAILED', 'TASK_CANCELLED', 'cancelled before it ran')
  return 'cancelled', true
end

local out = {}
local todo, seen, i = {root}, {}, 1
while i <= #todo do
  local id = todo[i]
  i = i + 1
  if not seen[id] then
    seen[id] = true
    local outcome, exists = cancel_one(id)
    out[#out + 1] = id
    out[#out + 1] = outcome
    if recursive and exists then
      for _, child in ipairs(safe('SMEMBERS', k_children(id))) do todo[#todo + 1] = child end
    end
  end
end
return reply(out)
