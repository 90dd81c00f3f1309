-- Claim up to max_n queued tasks for one worker: each gets a lease and a fencing token.
-- Takes more than one only when the queue is deep (len / batch_divisor), so that work is
-- not hoarded by one worker while others are idle. When nothing is queued, clears the
-- queues' wake-up bells (they are hints; a submit after this rings again). A queued id whose
-- record is corrupt is dropped from its queue; a queue key of the wrong type is moved aside.
--
-- KEYS[1] leases          task id -> lease deadline (served ms)
-- KEYS[2] clock           the served clock, read (renew and sweep advance it)
-- KEYS[3] nodes           read by the served clock
-- KEYS[4] stats
-- KEYS[5] corrupt
-- KEYS[6] node_tasks(node_id)
-- KEYS[NK+3i-2], KEYS[NK+3i-1], KEYS[NK+3i]: queue(name), bell(name), delayed(name) of the
--         i-th queue, in preference order (strict priority)
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3] lease_ms        ARGV[4] node_id     ARGV[5] worker_id
-- ARGV[6] max_n           ARGV[7] batch_divisor
-- ARGV[8..] queue names, in the order of their KEYS
-- Due DELAYED tasks of these queues are moved to their queues' fronts first.
-- Returns: {{{task_id, fence, fn, func, attempt, job_id, max_calls, args_blob, timeout_s,
--            retry_timeout, max_retries}, ...}, ms until the next DELAYED task of these queues
--           is due (-1: none)}
local deadline = served_now() + tonumber(ARGV[3])
local node, worker = ARGV[4], ARGV[5]
local max_n, divisor = tonumber(ARGV[6]), tonumber(ARGV[7])
local nq = #ARGV - 7
local out = {}

local due_in = -1
for qi = 1, nq do
  local dkey = KEYS[NK + 3 * qi]
  promote(ARGV[7 + qi], dkey, PROMOTE_BATCH)
  local wait = next_due_in(dkey)
  if wait and (due_in < 0 or wait < due_in) then due_in = wait end
end

-- The claimed row for a queued id, or nil if it is not queued any more (cancelled, already
-- final, unknown: its record says why) or its record is corrupt.
local function take(id, first)
  local tkey = k_task(id)
  local t = guarded('HMGET', tkey, 'in a queue; dropped from it', 'state', 'fn', 'func',
                    'attempt', 'job_id', 'max_calls', 'timeout_s', 'retry_timeout', 'max_retries')
  if not t or t[1] ~= 'PENDING_NODE_ASSIGNMENT' then return nil end
  -- Unreadable arguments reach the worker as none, so the task fails where its caller sees it.
  local args = guarded('GET', k_args(id), 'as the arguments of a queued task') or ''
  local fence = redis.call('HINCRBY', tkey, 'fence', 1)
  local state = 'SUBMITTED_TO_WORKER'
  if first then state = 'RUNNING' end
  redis.call('HSET', tkey, 'state', state, 'node_id', node, 'worker_id', worker, 'start_ms', NOW)
  redis.call('ZADD', K.leases, deadline, id)
  safe('SADD', K.node_tasks, id)
  return {id, fence, t[2], t[3], t[4], t[5] or '', t[6] or '0', args, t[7] or '', t[8] or '0',
          t[9] or '0'}
end

-- Strict priority: a later queue is looked at only when every earlier one is empty, and a
-- worker prefetches from the first queue only, so it never holds a lower-priority task
-- that it would start after higher-priority work arrived.
for qi = 1, nq do
  local qkey = KEYS[NK + 3 * qi - 2]
  local len = safe('LLEN', qkey)
  local want = math.max(1, math.min(max_n - #out, math.floor(len / divisor)))
  if qi > 1 then want = 1 end
  while len > 0 and want > 0 do
    local id = redis.call('RPOP', qkey)
    if not id then break end
    local row = take(id, #out == 0)
    if row then
      out[#out + 1] = row
      want = want - 1
    end
  end
  if redis.call('LLEN', qkey) > 0 then
    ring(ARGV[7 + qi])
    break
  end
  if #out > 0 then break end
end
if #out == 0 then
  for qi = 1, nq do redis.call('DEL', KEYS[NK + 3 * qi - 1]) end
end
return reply({out, due_in})
