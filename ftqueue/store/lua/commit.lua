-- Commit the outcomes of a worker's attempts, each fenced by its token, and mark the
-- prefetched task the worker starts next as RUNNING (so a node loss charges it).
-- ARGV: prefix, now_ms, next_task_id (or ''), n, then n records of 6:
--       task_id, fence, outcome ('ok' | 'err' | 'cancelled'), blob, retryable ('1'|'0'), message
-- Returns: per record 'finished' | 'failed' | 'retried' | 'fenced'.
local next_id, n = ARGV[3], tonumber(ARGV[4])
local out = {}
for i = 0, n - 1 do
  local b = 5 + i * 6
  local id, fence, outcome, blob, retryable, message =
    ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5]
  local t = redis.call('HMGET', k_task(id), 'state', 'fence', 'cancel')
  if t[3] then outcome = 'cancelled' end   -- a cancel request wins over what the task did
  if not ACTIVE[t[1]] or t[2] ~= fence then
    redis.call('HINCRBY', P .. ':stats', 'fenced', 1)
    out[#out + 1] = 'fenced'
  elseif outcome == 'ok' then
    redis.call('SET', k_result(id), blob)
    finish(id, 'FINISHED', '', '', blob)
    out[#out + 1] = 'finished'
  elseif outcome == 'err' and retryable == '1' and budget_left(id) then
    retry(id, 'TASK_EXECUTION_EXCEPTION', message, true)
    out[#out + 1] = 'retried'
  else
    redis.call('SET', k_result(id), blob)
    local error_type = 'TASK_EXECUTION_EXCEPTION'
    if outcome == 'cancelled' then
      error_type = 'TASK_CANCELLED'
      if message == '' then message = 'cancelled' end
    end
    finish(id, 'FAILED', error_type, message)
    out[#out + 1] = 'failed'
  end
end
if next_id ~= '' then
  local tkey = k_task(next_id)
  if redis.call('HGET', tkey, 'state') == 'SUBMITTED_TO_WORKER' then
    redis.call('HSET', tkey, 'state', 'RUNNING', 'start_ms', NOW)
  end
end
return out
