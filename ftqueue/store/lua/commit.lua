-- Commit the outcomes of a worker's attempts, each fenced by its token, and mark the
-- prefetched task the worker starts next as RUNNING (so a node loss charges it) if that
-- worker still holds it with that token: it may have been swept and claimed elsewhere.
--
-- KEYS[1] leases
-- KEYS[2] stats
-- KEYS[3] failed_index
-- KEYS[4] corrupt
-- KEYS[NK+2i-1], KEYS[NK+2i]: task(task_id), result(task_id) of record i, i = 1..n; then
--         task(next_task_id) when one is given
-- ARGV[1] namespace       ARGV[2] now_ms or ''
-- ARGV[3] next_task_id or ''
-- ARGV[4] worker_id that holds next_task_id ('': not checked, for older callers)
-- ARGV[5] fence of next_task_id ('': not checked)
-- ARGV[6] n, then from ARGV[7] n records of 6:
--         task_id, fence, outcome ('ok' | 'err' | 'cancelled'), blob, retryable ('1'|'0'), message
-- Returns: per record 'finished' | 'failed' | 'retried' | 'fenced' | 'corrupt', then, when
--          next_task_id is given, 'next:held' or 'next:lost' (does the worker hold it?)
local next_id, next_worker, next_fence = ARGV[3], ARGV[4], ARGV[5]
local n = tonumber(ARGV[6])

local function commit_one(tkey, rkey, id, fence, outcome, blob, retryable, message)
  -- The fencing fields and all that finish needs, in one read.
  local f, t = read_fields(tkey, FINAL_FIELDS, 'by a commit', 'state', 'fence', 'cancel')
  if not t then
    redis.call('ZREM', K.leases, id)
    return 'corrupt'
  end
  if t[3] then outcome = 'cancelled' end   -- a cancel request wins over what the task did
  if not ACTIVE[t[1]] or t[2] ~= fence then
    redis.call('HINCRBY', K.stats, 'fenced', 1)
    return 'fenced'
  end
  if outcome == 'ok' then
    store_result(rkey, blob, f)
    finish(id, 'FINISHED', '', '', blob, f)
    return 'finished'
  end
  if outcome == 'err' and retryable == '1' and budget_left(id) then
    retry(id, 'TASK_EXECUTION_EXCEPTION', message, true)
    return 'retried'
  end
  store_result(rkey, blob, f)
  local error_type = 'TASK_EXECUTION_EXCEPTION'
  if outcome == 'cancelled' then
    error_type = 'TASK_CANCELLED'
    if message == '' then message = 'cancelled' end
  end
  finish(id, 'FAILED', error_type, message, nil, f)
  return 'failed'
end

-- The next task is read first: the commits below do not change it (it is another task,
-- prefetched, so no dependency or limit release touches it), and a default-shape one can
-- take over the room of a task that ends here (lib.lua HANDOFF).
local t, held, starts
if next_id ~= '' then
  t = guarded('HMGET', KEYS[NK + 2 * n + 1], 'as the task a worker starts next', 'state',
              'worker_id', 'fence', 'node_id', 'shape')
  held = t and t[2] == next_worker and (next_fence == '' or t[3] == next_fence)
  starts = t and t[1] == 'SUBMITTED_TO_WORKER' and (next_worker == '' or held)
  -- Only on a node that declared its CPUs and is not over them (lend.lua's take-back may
  -- run it over for a moment): then giving back and taking again always fits.
  if starts and t[4] and (not t[5] or t[5] == DEFAULT_SHAPE)
      and (tonumber(redis.call('HGET', k_node_free(t[4]), 'CPU')) or -1) >= 0 then
    HANDOFF = {node = t[4], taken = false}
  end
end

local out = {}
for i = 1, n do
  local b = 7 + (i - 1) * 6
  out[i] = commit_one(KEYS[NK + 2 * i - 1], KEYS[NK + 2 * i], ARGV[b], ARGV[b + 1], ARGV[b + 2],
                      ARGV[b + 3], ARGV[b + 4], ARGV[b + 5])
end
if next_id ~= '' then
  local tkey = KEYS[NK + 2 * n + 1]
  if starts and HANDOFF and HANDOFF.taken then
    redis.call('HSET', tkey, 'state', 'RUNNING', 'start_ms', NOW, 'held', t[4], 'gpu_ids', '')
  elseif starts then
    -- A prefetched task reserves its shape when it starts; with no room left on its node
    -- (another worker took it meanwhile) it goes back to its queue, not started. So does
    -- it on a node declared dead (its workers went on): that node has no capacity record to
    -- reserve on, and starts nothing, as it claims nothing (claim.lua).
    local fkey = k_node_free(t[4] or '')
    local need = shape_units(t[5])
    local fits, gpus, registered = false, nil, false
    if redis.pcall('HGET', k_node(t[4] or ''), 'state') ~= 'DEAD'
        or redis.call('EXISTS', fkey) == 1 then
      fits, gpus, registered = can_reserve(fkey, need)
    end
    if fits then
      local fields = {}
      if registered then
        local _, reserved = reserve(t[4], fkey, need, gpus)
        fields = reserved
      end
      redis.call('HSET', tkey, 'state', 'RUNNING', 'start_ms', NOW, unpack(fields))
    else
      requeue_unstarted(next_id)
      held = false
    end
  end
  -- Whether the worker still holds the task it is about to start (a task swept while the
  -- worker was frozen may already run elsewhere, under the same attempt number).
  if held and (t[1] == 'SUBMITTED_TO_WORKER' or t[1] == 'RUNNING') then
    out[#out + 1] = 'next:held'
  else
    out[#out + 1] = 'next:lost'
  end
end
return reply(out)
