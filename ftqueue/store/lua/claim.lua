-- Claim up to max_n queued tasks for one worker: each gets a lease and a fencing token.
-- Takes more than one only when the queue is deep (len / batch_divisor), so that work is
-- not hoarded by one worker while others are idle. When nothing is queued, clears the
-- queues' wake-up bells (they are hints; a submit after this rings again). A queued id whose
-- record is corrupt is dropped from its queue; a queue key of the wrong type is moved aside.
--
-- Resources (docs/design.md): a queue's tasks wait in one slot per resource shape (and per
-- node, for pinned tasks). The worker names the shapes its node can ever fit; the claim takes
-- from the first slot whose shape fits what the node has free now and reserves it, so a task
-- that does not fit never blocks the ones behind it. Prefetch (more than one task) is for the
-- default shape only; those reserve when they start (commit.lua).
--
-- Limits: a task with a limit_key is claimed only first (never prefetched, so it holds no
-- slot idle) and only within its limits: else it is held back out of the queue
-- (max_concurrency: the key's waiting list; max_rate: DELAYED until its reserved start, or
-- until the window of actual starts opens) and the claim goes on.
--
-- KEYS[1] leases          task id -> lease deadline (served ms)
-- KEYS[2] clock           the served clock, read (renew and sweep advance it)
-- KEYS[3] nodes           read by the served clock
-- KEYS[4] stats
-- KEYS[5] corrupt
-- KEYS[6] node_tasks(node_id)
-- KEYS[7] node_free(node_id)
-- KEYS[8] limit_keys      limit keys that held a task back
-- KEYS[9] failed_index    a task hard-pinned to a node that is gone fails here (take)
-- Then per queue, in preference order (strict priority): bell(name), delayed(name), and per
--         shape of it two slots: queue(<name>@node=<node_id>[@<shape>]),
--         queue(<name>[@<shape>])
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3] lease_ms        ARGV[4] node_id     ARGV[5] worker_id
-- ARGV[6] max_n           ARGV[7] batch_divisor
-- ARGV[8] number of queues, then per queue: name, number of shapes, the shapes
-- Due DELAYED tasks of these queues are moved to their queues first.
-- Returns: {{{task_id, fence, fn, func, attempt, job_id, max_calls, args_blob, timeout_s,
--            retry_timeout, max_retries, gpu_ids}, ...}, ms until the next DELAYED task of
--           these queues is due (-1: none)}
local deadline = served_now() + tonumber(ARGV[3])
local node, worker = ARGV[4], ARGV[5]
-- A node declared dead (its supervisor frozen or cut off while its workers go on) claims
-- nothing: it has no capacity record to reserve on, and its leases are not renewed.
if redis.pcall('HGET', k_node(node), 'state') == 'DEAD'
    and redis.call('EXISTS', K.node_free) == 0 then
  return reply({{}, -1})
end
local max_n, divisor = tonumber(ARGV[6]), tonumber(ARGV[7])
local out = {}

local queues, ki, ai = {}, NK, 9
for qi = 1, tonumber(ARGV[8]) do
  local q = {name = ARGV[ai], bell = KEYS[ki + 1], delayed = KEYS[ki + 2], slots = {}}
  local ns = tonumber(ARGV[ai + 1])
  ki = ki + 2
  for si = 1, ns do
    local shape = ARGV[ai + 1 + si]
    q.slots[#q.slots + 1] = {KEYS[ki + 1], shape}
    q.slots[#q.slots + 1] = {KEYS[ki + 2], shape}
    ki = ki + 2
  end
  ai = ai + 2 + ns
  queues[qi] = q
end

for _, q in ipairs(queues) do promote(q.name, q.delayed, PROMOTE_BATCH) end

-- Whether a limited task may start now; if not it is held back (see the header). max_rate
-- is a sliding window on actual starts: a claim is allowed when the n-th latest one is at
-- least a period ago. So that a busy key's tasks do not all wake at each window's opening,
-- a task over the rate first reserves the next free start among the reservations and
-- waits DELAYED until then; at its reserved time it is checked against actual starts again
-- (a reservation started late, when no worker was free, does not make a burst).
local function admit(id, tkey, key, max, rate_n, rate_ms, reserved, queue)
  if max and safe('SCARD', k_limit_running(key)) >= max then
    safe('LPUSH', k_limit_waiting(key), id)
    redis.call('SADD', K.limit_keys, key)
    return false
  end
  local started = k_limit_started(key)
  if rate_n and rate_ms then
    local wait_until = NOW
    if not reserved then
      local rkey = k_limit_starts(key)
      if safe('LLEN', rkey) >= rate_n then
        wait_until = math.max(NOW, tonumber(redis.call('LINDEX', rkey, -rate_n)) + rate_ms)
      end
      redis.call('RPUSH', rkey, wait_until)
      redis.call('LTRIM', rkey, -rate_n, -1)
      redis.call('PEXPIRE', rkey, wait_until - NOW + rate_ms)
    end
    if wait_until <= NOW and safe('LLEN', started) >= rate_n then
      wait_until = math.max(NOW, tonumber(redis.call('LINDEX', started, -rate_n)) + rate_ms)
    end
    if wait_until > NOW then
      redis.call('HSET', tkey, 'rate_reserved', '1')
      redis.call('SADD', K.limit_keys, key)
      delay(id, queue, wait_until)
      return false
    end
    redis.call('RPUSH', started, NOW)
    redis.call('LTRIM', started, -rate_n, -1)
    redis.call('PEXPIRE', started, rate_ms)
  end
  redis.call('HDEL', tkey, 'rate_reserved')
  if max then safe('SADD', k_limit_running(key), id) end
  return true
end

-- The claimed row for a queued id, or nil if it is not queued any more (cancelled, already
-- final, unknown: its record says why) or its record is corrupt; 'later' (a limited task is
-- claimed only first) or 'held' (held back by its limits). The first row starts now: it
-- reserves its shape on this node.
local function take(id, first, need, gpus, registered)
  local tkey = k_task(id)
  local t = guarded('HMGET', tkey, 'in a queue; dropped from it', 'state', 'fn', 'func',
                    'attempt', 'job_id', 'max_calls', 'timeout_s', 'retry_timeout', 'max_retries',
                    'limit_key', 'max_concurrency', 'rate_n', 'rate_ms', 'rate_reserved', 'queue',
                    'pin', 'fence')
  if not t or t[1] ~= 'PENDING_NODE_ASSIGNMENT' then return nil end
  if t[16] and t[16] ~= node then    -- a hard pin whose node is gone (lib.lua enqueue)
    finish(id, 'FAILED', 'TASK_UNSCHEDULABLE_ERROR', 'it must run on node ' .. t[16] ..
           ', which is gone (NodeAffinitySchedulingStrategy with soft=False)')
    return nil
  end
  if t[10] then
    if not first then return 'later' end
    if not admit(id, tkey, t[10], tonumber(t[11]), tonumber(t[12]), tonumber(t[13]), t[14],
                 t[15]) then
      return 'held'
    end
  end
  -- Unreadable arguments reach the worker as none, so the task fails where its caller sees it.
  local args = guarded('GET', k_args(id), 'as the arguments of a queued task') or ''
  local fence = (tonumber(t[17]) or 0) + 1     -- written below, with the claim's fields
  local state, gpu_ids, held = 'SUBMITTED_TO_WORKER', '', {}
  if first then
    state = 'RUNNING'
    if registered then gpu_ids, held = reserve(node, K.node_free, need, gpus) end
  end
  redis.call('HSET', tkey, 'state', state, 'node_id', node, 'worker_id', worker, 'start_ms', NOW,
             'fence', fence, unpack(held))
  redis.call('ZADD', K.leases, deadline, id)
  safe('SADD', K.node_tasks, id)
  return {id, fence, t[2], t[3], t[4], t[5] or '', t[6] or '0', args, t[7] or '', t[8] or '0',
          t[9] or '0', gpu_ids}
end

-- Strict priority: a later queue is looked at only when no task of an earlier one can start
-- here now, and a worker prefetches from the first queue only, so it never holds a
-- lower-priority task that it would start after higher-priority work arrived.
local blocked = false
for qi, q in ipairs(queues) do
  local left = false
  for _, slot in ipairs(q.slots) do
    local qkey, shape = slot[1], slot[2]
    local len = safe('LLEN', qkey)
    if len > 0 then
      local need = shape_units(shape)
      local fits, gpus, registered = can_reserve(K.node_free, need)
      if not fits then
        blocked = true         -- waits for room here (or for another node)
      else
        local want = 1
        if qi == 1 and shape == DEFAULT_SHAPE then
          want = math.max(1, math.min(max_n, math.floor(len / divisor)))
        end
        local held, popped = 0, 0
        while want > 0 and held < HOLD_MAX do
          local id = redis.call('RPOP', qkey)
          if not id then break end
          popped = popped + 1
          local row = take(id, #out == 0, need, gpus, registered)
          if row == 'later' then
            redis.call('RPUSH', qkey, id)    -- back to the front, for the next claim
            popped = popped - 1
            break
          elseif row == 'held' then
            held = held + 1
          elseif row then
            out[#out + 1] = row
            want = want - 1
          end
        end
        -- What a take adds to this list (a task its end makes ready) rings the bell itself
        -- when the list was empty; otherwise some of `len` are left.
        if len > popped then left = true end
      end
    end
    if #out > 0 then break end
  end
  if left then ring(q.name) end
  if #out > 0 or left then break end
end
if #out == 0 then
  for _, q in ipairs(queues) do redis.call('DEL', q.bell) end
  -- Released room rings this node's bell (lib.lua release_resources).
  if blocked and redis.call('EXISTS', K.node_free) == 1 then
    redis.call('HSET', K.node_free, BLOCKED_FLAG, 1)
  end
end
-- After the loop: a task held back by max_rate may have become the earliest due.
local due_in = -1
for _, q in ipairs(queues) do
  local wait = next_due_in(q.delayed)
  if wait and (due_in < 0 or wait < due_in) then due_in = wait end
end
return reply({out, due_in})
