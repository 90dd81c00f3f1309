-- Claim up to max_n queued tasks for one worker: each gets a lease and a fencing token.
-- Takes more than one only when the queue is deep (len / batch_divisor), so that work is
-- not hoarded by one worker while others are idle. When nothing is queued, clears the
-- queues' wake-up bells (they are hints; a submit after this rings again).
-- ARGV: prefix, now_ms, lease_ms, node_id, worker_id, max_n, batch_divisor, nq, queues...
-- Returns: {{task_id, fence, fn, func, attempt, job_id, max_calls, args_blob, timeout_s,
--            retry_timeout}, ...}
local deadline, node, worker = NOW + tonumber(ARGV[3]), ARGV[4], ARGV[5]
local max_n, divisor, nq = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local out = {}
for qi = 1, nq do
  local qkey = P .. ':queue:' .. ARGV[8 + qi]
  local len = redis.call('LLEN', qkey)
  local want = math.max(1, math.min(max_n - #out, math.floor(len / divisor)))
  while len > 0 and want > 0 do
    local id = redis.call('RPOP', qkey)
    if not id then break end
    local tkey = k_task(id)
    local t = redis.call('HMGET', tkey, 'state', 'fn', 'func', 'attempt', 'job_id', 'max_calls',
                         'timeout_s', 'retry_timeout')
    -- Anything not queued (cancelled, already final, unknown) is dropped: its record says why.
    if t[1] == 'PENDING_NODE_ASSIGNMENT' then
      local fence = redis.call('HINCRBY', tkey, 'fence', 1)
      local state = 'SUBMITTED_TO_WORKER'
      if #out == 0 then state = 'RUNNING' end
      redis.call('HSET', tkey, 'state', state, 'node_id', node, 'worker_id', worker, 'start_ms', NOW)
      redis.call('ZADD', P .. ':leases', deadline, id)
      redis.call('SADD', P .. ':node_tasks:' .. node, id)
      out[#out + 1] = {id, fence, t[2], t[3], t[4], t[5] or '', t[6] or '0',
                       redis.call('GET', k_args(id)) or '', t[7] or '', t[8] or '0'}
      want = want - 1
    end
  end
  if redis.call('LLEN', qkey) > 0 then ring(ARGV[8 + qi]) end
  if #out >= max_n then break end
end
if #out == 0 then
  for qi = 1, nq do redis.call('DEL', P .. ':bell:' .. ARGV[8 + qi]) end
end
return out
