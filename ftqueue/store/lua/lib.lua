-- Shared helpers, placed after the generated prelude (see ftqueue/store/scripts.py: `K`, the
-- script's fixed KEYS by name; `NK`, how many; `k_<name>(id)`, the keys found at run time;
-- the constants) and before each script, which carries only the statements it names
-- (scripts.py shake: keep one top-level statement per `local`). Never run on its own.
-- Every script takes ARGV[1] = the namespace (for `k_<name>`) and ARGV[2] = now in ms ('' for
-- Redis's own clock); its own arguments follow. Every script answers `reply(result)`:
-- {result, keys isolated as corrupt by this call (each reported once, ever)}.

-- Time comes from Redis itself unless a caller (a test's fake clock) passes it: leases must
-- not depend on the clocks of the hosts that run nodes and drivers.
local NOW = tonumber(ARGV[2])
if not NOW then
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local TERMINAL = {FINISHED = true, FAILED = true}
local ACTIVE = {SUBMITTED_TO_WORKER = true, RUNNING = true}
local JITTER_MAX = 0.1

-- Corrupt records ------------------------------------------------------------------------
-- A key holding a type ftqueue never writes there must not fail the script (that killed
-- every node that swept it, at every restart): it is isolated, counted, reported once.

local CORRUPT = {}
-- Set when a task that another partition waits for ended (release_dependents): the reply
-- says so, and the caller applies the outbox at once (ftqueue/store/store.py).
local OUTBOX = false
-- The bells this call rang (ring): the reply names them, and on a partitioned namespace
-- the caller rings them where idle workers wait, at the namespace's own prefix.
local RANG = {}

local function reply(result)
  if OUTBOX or next(RANG) then
    local rang = {}
    for name in pairs(RANG) do rang[#rang + 1] = name end
    local outbox = 0
    if OUTBOX then outbox = 1 end
    return {result, CORRUPT, outbox, rang}
  end
  return {result, CORRUPT}
end

local function is_wrong_type(r)
  return type(r) == 'table' and r.err ~= nil
    and string.find(tostring(r.err), 'WRONGTYPE', 1, true) ~= nil
end

-- Pass any other error on with its text (its code first: OOM, BUSY...), as redis.call would.
local function raise(r)
  error(tostring(r.err), 0)
end

local function key_type(key)
  local t = redis.call('TYPE', key)
  if type(t) == 'table' then return t.ok or '?' end
  return t
end

local function isolate(key, reason)
  redis.call('HINCRBY', K.stats, 'corrupt', 1)
  if redis.call('HSETNX', K.corrupt, key, reason) == 1 then CORRUPT[#CORRUPT + 1] = key end
end

-- A read of a record this script did not write (a task hash, its arguments): nil if the key
-- holds another type, which is then isolated; the caller drops the id from where it found it.
local function guarded(cmd, key, found_in, ...)
  local r = redis.pcall(cmd, key, ...)
  if is_wrong_type(r) then
    isolate(key, 'a ' .. key_type(key) .. ' where a record belongs; found ' .. found_in)
    return nil
  end
  if type(r) == 'table' and r.err then raise(r) end
  return r
end

-- A list, set or hash ftqueue keeps (a queue, a notification list, a task's dependents, a
-- node record...) that holds another type is moved aside to its quarantine key, so the
-- structure works again; the command then runs on the fresh key.
local function safe(cmd, key, ...)
  local r = redis.pcall(cmd, key, ...)
  if is_wrong_type(r) then
    local aside = k_quarantine(key)
    local was = key_type(key)
    redis.call('RENAME', key, aside)
    isolate(key, 'a ' .. was .. ' where ftqueue keeps another type; moved to ' .. aside)
    return redis.call(cmd, key, ...)
  end
  if type(r) == 'table' and r.err then raise(r) end
  return r
end

-- The served clock (docs/design.md, "Redis stalls are not node deaths") -------------------
-- Lease deadlines and node heartbeats are kept in time during which Redis served someone:
-- a gap between two scripts that advance the clock (renew, sweep) counts at most
-- SERVED_GAP_MAX_MS, so a frozen or restarting Redis ages no lease. When nothing is at stake
-- (no lease, no live node) the clock catches up with Redis's own.

local function served_now()
  local c = redis.call('HMGET', K.clock, 'served_ms', 'last_ms')
  local served, last = tonumber(c[1]), tonumber(c[2])
  if not served or not last then return NOW end
  local gap = math.max(0, NOW - last)
  if gap > SERVED_GAP_MAX_MS
      and (redis.call('ZCARD', K.leases) > 0 or redis.call('ZCARD', K.nodes) > 0) then
    gap = SERVED_GAP_MAX_MS
  end
  return served + gap
end

local function advance_served_clock()
  local served = served_now()
  redis.call('HSET', K.clock, 'served_ms', served, 'last_ms', NOW)
  return served
end

-- Queues ---------------------------------------------------------------------------------

local function ring(queue)
  local bell = k_bell(queue)
  if safe('LPUSH', bell, '1') > BELL_MAX then redis.call('LTRIM', bell, 0, BELL_MAX - 1) end
  RANG[queue] = true
end

-- Resources (docs/design.md, "Resources") ---------------------------------------------------
-- A task's shape (field 'shape', `CPU=1,GPU=0.5`; none: DEFAULT_SHAPE) and the node it is
-- pinned to (field 'pin': node affinity, SPREAD) name the list it waits in, its slot: one per
-- queue and shape (and node). keys.py's queue_slot builds the same names. A node's free
-- capacity is the hash node_free(node): per resource, units of 1/UNIT (memory: bytes), and
-- per GPU id 'gpu:<id>'. A task reserves its shape when it starts on a node (field 'held')
-- and gives it back when its attempt ends, whichever way it ends (release_lease).

local function queue_slot(queue, shape, pin)
  local name = queue
  if pin and pin ~= '' then name = name .. '@node=' .. pin end
  if shape and shape ~= '' and shape ~= DEFAULT_SHAPE then name = name .. '@' .. shape end
  return name
end

local function slot_of(id, queue)
  local t = redis.call('HMGET', k_task(id), 'shape', 'pin')
  return queue_slot(queue, t[1], t[2])
end

local function shape_units(shape)
  local out = {}
  if not shape or shape == '' then shape = DEFAULT_SHAPE end
  if shape == NO_DEMAND then return out end
  for name, amount in string.gmatch(shape, '([^,=]+)=([^,]+)') do
    if name == 'memory' then
      out[name] = tonumber(amount)
    else
      out[name] = math.floor(tonumber(amount) * UNIT + 0.5)
    end
  end
  return out
end

-- A node's free hash from what it offers (its record) less what the tasks it holds have
-- reserved there (they give it back when they end): for a node declared dead that comes
-- back (renew.lua), and for a free hash found corrupt. Nothing if its record says nothing.
local function rebuild_free(node, fkey)
  local n = guarded('HMGET', k_node(node), 'as the record of node ' .. node, 'resources',
                    'gpu_ids')
  if not n or not n[1] then return end
  local ok, offered = pcall(cjson.decode, n[1])
  if not ok or type(offered) ~= 'table' then return end
  local free = {}
  for name, units in pairs(offered) do free[name] = tonumber(units) or 0 end
  for gid in string.gmatch(n[2] or '', '[^,]+') do free['gpu:' .. gid] = UNIT end
  for _, id in ipairs(safe('SMEMBERS', k_node_tasks(node))) do
    local t = guarded('HMGET', k_task(id), 'held by node ' .. node, 'held', 'shape', 'gpu_ids',
                      'lent')
    if t and t[1] == node then
      local need = shape_units(t[2])
      if t[4] then need.CPU = nil end
      for name, units in pairs(need) do free[name] = (free[name] or 0) - units end
      if need.GPU and t[3] and t[3] ~= '' then
        for gid in string.gmatch(t[3], '[^,]+') do
          free['gpu:' .. gid] = (free['gpu:' .. gid] or 0) - math.min(need.GPU, UNIT)
        end
      end
    end
  end
  local flat = {}
  for name, units in pairs(free) do
    flat[#flat + 1] = name
    flat[#flat + 1] = string.format('%.0f', units)    -- memory: bytes, beyond %.14g
  end
  if #flat > 0 then redis.call('HSET', fkey, unpack(flat)) end
end

-- A free hash holding another type (written by someone else) must not stop every claim of
-- its node: it is moved aside, isolated, and rebuilt.
local function sound_free(fkey)
  local was = key_type(fkey)
  if was == 'hash' or was == 'none' then return end
  local aside = k_quarantine(fkey)
  redis.call('RENAME', fkey, aside)
  isolate(fkey, 'a ' .. was .. ' where ftqueue keeps a hash; moved to ' .. aside)
  rebuild_free(string.sub(fkey, #k_node_free('') + 1), fkey)
end

-- The GPU ids `units` of GPU would take from free hash `fkey`, or nil: a fraction shares one
-- id (the fullest that still fits, so whole ids stay free); whole GPUs take unused ids.
local function pick_gpus(fkey, units)
  local flat = redis.call('HGETALL', fkey)
  local ids = {}
  for i = 1, #flat, 2 do
    local gid = string.match(flat[i], '^gpu:(.+)$')
    if gid then ids[#ids + 1] = {gid, tonumber(flat[i + 1]) or 0} end
  end
  table.sort(ids, function(a, b) return a[1] < b[1] end)
  if units < UNIT then
    local best
    for _, g in ipairs(ids) do
      if g[2] >= units and (not best or g[2] < best[2]) then best = g end
    end
    if best then return {best[1]} end
    return nil
  end
  local want, picked = math.floor(units / UNIT), {}
  for _, g in ipairs(ids) do
    if #picked < want and g[2] >= UNIT then picked[#picked + 1] = g[1] end
  end
  if #picked < want then return nil end
  return picked
end

-- Whether the node whose free hash is `fkey` can start a task of demand `need` now (a node
-- that declared nothing, e.g. not registered yet, counts nothing), the GPU ids it takes, and
-- whether the node declared its resources (the hash exists: then a start reserves).
-- One HMGET in the common case: a field found means the hash exists.
local function can_reserve(fkey, need)
  local names = {}
  for name in pairs(need) do names[#names + 1] = name end
  if #names == 0 then return true, nil, redis.call('EXISTS', fkey) == 1 end
  local have = redis.pcall('HMGET', fkey, unpack(names))
  if is_wrong_type(have) then       -- corrupt: moved aside and rebuilt (sound_free)
    sound_free(fkey)
    have = redis.call('HMGET', fkey, unpack(names))
  end
  local found = false
  for i = 1, #names do if have[i] then found = true end end
  if not found and redis.call('EXISTS', fkey) == 0 then return true, nil, false end
  for i, name in ipairs(names) do
    if (tonumber(have[i]) or 0) < need[name] then return false, nil, true end
  end
  if need.GPU then
    local gpus = pick_gpus(fkey, need.GPU)
    if not gpus then return false, nil, true end
    return true, gpus, true
  end
  return true, nil, true
end

-- Takes `need` (and GPU ids `gpus`) from a node whose free hash exists (can_reserve said so);
-- the caller writes the returned fields into the task hash with its own HSET: 'held' (the
-- node) and 'gpu_ids'.
local function reserve(node, fkey, need, gpus)
  for name, units in pairs(need) do redis.call('HINCRBY', fkey, name, -units) end
  local ids = ''
  if gpus then
    local per = math.min(need.GPU, UNIT)
    for _, gid in ipairs(gpus) do redis.call('HINCRBY', fkey, 'gpu:' .. gid, -per) end
    ids = table.concat(gpus, ',')
  end
  return ids, {'held', node, 'gpu_ids', ids}
end

-- A hand-off (commit.lua): the task this worker starts next, of the default shape, on node
-- HANDOFF.node takes over the room of the first default-shape task released here in this
-- call, instead of giving it back and taking it again (the node's free room is the same
-- either way, so no blocked worker has anything to wake for).
local HANDOFF = nil

-- `t`: the task's {held, shape, gpu_ids, lent} when the caller has read them.
local function release_resources(id, t)
  local tkey = k_task(id)
  t = t or redis.call('HMGET', tkey, 'held', 'shape', 'gpu_ids', 'lent')
  if not t[1] then return end
  redis.call('HDEL', tkey, 'held', 'lent')
  if HANDOFF and not HANDOFF.taken and t[1] == HANDOFF.node and not t[4]
      and (not t[2] or t[2] == DEFAULT_SHAPE) then
    HANDOFF.taken = true
    return
  end
  local fkey = k_node_free(t[1])
  sound_free(fkey)
  if redis.call('EXISTS', fkey) == 0 then return end     -- the node is gone
  local need = shape_units(t[2])
  if t[4] then need.CPU = nil end    -- lent while it waited in get (lend.lua): free already
  for name, units in pairs(need) do redis.call('HINCRBY', fkey, name, units) end
  if need.GPU and t[3] and t[3] ~= '' then
    local per = math.min(need.GPU, UNIT)
    for gid in string.gmatch(t[3], '[^,]+') do redis.call('HINCRBY', fkey, 'gpu:' .. gid, per) end
  end
  -- A worker of that node found work it had no room for: wake it (its node's bell).
  if redis.call('HDEL', fkey, BLOCKED_FLAG) == 1 then ring('@' .. t[1]) end
end

local finish     -- (Transitions, below) a task that can never be queued fails at once

-- A node is gone when its free hash is (unpin deletes it) and its record says it is not alive
-- (a live node that offers nothing at all has no free hash).
local function node_gone(node)
  return redis.call('EXISTS', k_node_free(node)) == 0
    and redis.pcall('HGET', k_node(node), 'state') ~= 'ALIVE'
end

-- A queue that already held work has no idle worker to wake: a worker only sleeps after a
-- claim found its queues empty, and a claim that leaves work behind rings for the next one.
-- A task pinned to a node that is gone (its free hash with it): a soft pin is dropped; a
-- hard one fails the task as unschedulable, here (no node may be able to claim it, to fail
-- it: none that fits its shape or serves its queue). Returns whether the task was queued.
-- Every script that may queue a task (and so fail one) declares what finish needs:
-- K.leases, K.stats, K.failed_index.
-- `t`: the task's {shape, pin, pin_soft} when the caller knows them.
local function enqueue(id, queue, front, t)
  local cmd = 'LPUSH'
  if front then cmd = 'RPUSH' end
  local tkey = k_task(id)
  t = t or redis.call('HMGET', tkey, 'shape', 'pin', 'pin_soft')
  local pin = t[2]
  if pin and node_gone(pin) then
    if t[3] ~= '1' then
      finish(id, 'FAILED', 'TASK_UNSCHEDULABLE_ERROR', 'it must run on node ' .. pin ..
             ', which is gone (NodeAffinitySchedulingStrategy with soft=False)')
      return false
    end
    redis.call('HDEL', tkey, 'pin', 'pin_soft')
    pin = nil
  end
  local slot = queue_slot(queue, t[1], pin)
  if pin then safe('SADD', k_pins(pin), slot) end
  if safe(cmd, k_queue(slot), id) == 1 then ring(queue) end
  return true
end

-- A node is gone: the tasks waiting in its pinned slots go where enqueue now puts them.
local function unpin(node)
  -- Its bell too: a ring its workers did not live to take would stay, one per dead node.
  redis.call('DEL', k_node_free(node), k_bell('@' .. node))
  local pkey = k_pins(node)
  for _, slot in ipairs(safe('SMEMBERS', pkey)) do
    local qkey = k_queue(slot)
    local ids = safe('LRANGE', qkey, 0, -1)
    redis.call('DEL', qkey)
    for i = #ids, 1, -1 do     -- oldest first (a list's tail is its head)
      local t = guarded('HMGET', k_task(ids[i]), 'in ' .. qkey .. '; dropped from it',
                        'state', 'queue')
      if t and t[1] == 'PENDING_NODE_ASSIGNMENT' then enqueue(ids[i], t[2], false) end
    end
  end
  redis.call('DEL', pkey)
end

-- Delayed tasks (docs/design.md, "Time and flow control") -------------------------------------
-- A task waiting for its time (delay_s, eta, a retry delay) is DELAYED, in its queue's
-- delayed set (due time, Redis ms) and in no queue: it holds no worker. Whoever claims from
-- that queue or sweeps moves the due ones to the queue's front, each in O(log n), atomically.

local function delay(id, queue, due_ms)
  redis.call('HSET', k_task(id), 'state', 'DELAYED', 'due_ms', due_ms)
  local dkey = k_delayed(queue)
  safe('ZADD', dkey, due_ms, id)
  -- The earliest due now: a sleeping worker wakes, learns it, sleeps until then.
  if redis.call('ZRANGE', dkey, 0, 0)[1] == id then ring(queue) end
end

-- Queued now, or DELAYED when its record says it is not due yet.
local function make_ready(id, queue, front)
  local due = tonumber(redis.call('HGET', k_task(id), 'due_ms'))
  if due and due > NOW then
    delay(id, queue, due)
    return
  end
  redis.call('HSET', k_task(id), 'state', 'PENDING_NODE_ASSIGNMENT')
  enqueue(id, queue, front)
end

-- Due tasks of one queue to its front (at most `limit`); the number moved.
local function promote(queue, dkey, limit)
  local due = safe('ZRANGEBYSCORE', dkey, '-inf', NOW, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    redis.call('ZREM', dkey, id)
    local t = guarded('HMGET', k_task(id), 'in ' .. dkey .. '; dropped from it', 'state')
    if t and t[1] == 'DELAYED' then
      redis.call('HSET', k_task(id), 'state', 'PENDING_NODE_ASSIGNMENT')
      enqueue(id, queue, true)
    end
  end
  return #due
end

-- Milliseconds until the earliest task of a delayed set is due, or nil when it is empty.
local function next_due_in(dkey)
  local first = safe('ZRANGE', dkey, 0, 0, 'WITHSCORES')
  if #first == 0 then return nil end
  return math.max(0, tonumber(first[2]) - NOW)
end

-- A charged retry waits min(max, base * backoff^(n-1)) ms (n: its retry number), less up to
-- 10 % jitter derived from the task id and attempt, so retries of many tasks spread out.
local function retry_delay_ms(id, n)
  local t = redis.call('HMGET', k_task(id), 'retry_delay_ms', 'retry_backoff',
                       'retry_max_delay_ms', 'attempt')
  local base = tonumber(t[1]) or 0
  if base <= 0 then return 0 end
  local wait = math.min(tonumber(t[3]) or base, base * (tonumber(t[2]) or 1) ^ (n - 1))
  local seed, text = 0, id .. ':' .. (t[4] or '')
  for i = 1, #text do seed = (seed * 31 + string.byte(text, i)) % 1000003 end
  return math.floor(wait * (1 - JITTER_MAX * (seed % 1000) / 1000))
end

-- Transitions ------------------------------------------------------------------------------
-- The helpers below take ids whose task hash the caller has read (so it is a hash).

local function record_attempt(id, state, error_type, message)
  local t = redis.call('HMGET', k_task(id), 'attempt', 'node_id', 'worker_id', 'start_ms')
  safe('RPUSH', k_attempts(id), cjson.encode({
    attempt_number = tonumber(t[1]) or 0, state = state,
    node_id = t[2] or '', worker_id = t[3] or '',
    error_type = error_type, error_message = string.sub(message, 1, MESSAGE_MAX),
    start_ms = tonumber(t[4]) or NOW, end_ms = NOW}))
end

-- `summary tasks` without a scan: per function, tasks created and tasks ended in each
-- final state (stats fields `summary:<what>:<func>`); a requeue or a rebuild takes its end
-- back. docs/design.md, "Per-task Redis work".
local function count_summary(what, func, n)
  redis.call('HINCRBY', K.stats, 'summary:' .. what .. ':' .. (func or '?'), n)
end

-- Tasks this script call created, per function: counted once per call (count_created).
local CREATED = {}

local function count_created()
  for func, n in pairs(CREATED) do count_summary('created', func, n) end
  CREATED = {}
end

-- Per-minute counters of finished tasks, retries and failures, for `ftqueue status` and
-- the dashboard's charts.
local function count_recent(field)
  local key = k_stats_minute(math.floor(NOW / MINUTE_MS))
  -- The minute's key is new only when a field of it is: expire it then, not on every count.
  if safe('HINCRBY', key, field, 1) == 1 then redis.call('EXPIRE', key, STATS_MINUTE_TTL_S) end
end

-- Limits (docs/design.md, "Time and flow control") ----------------------------------------
-- A task with a limit_key and max_concurrency holds a slot (its id in the key's running set)
-- from its claim until its lease is released, however that happens (commit, retry, crash,
-- node loss, cancel). Tasks held back wait in the key's waiting list, out of their queue;
-- whenever a task of the key ends and a slot is free, the oldest goes back to its queue.

local function wake_limited(key)
  local wkey = k_limit_waiting(key)
  while true do
    local id = safe('RPOP', wkey)
    if not id then return end
    local t = guarded('HMGET', k_task(id), 'in ' .. wkey .. '; dropped from it', 'state',
                      'queue')
    if t and t[1] == 'PENDING_NODE_ASSIGNMENT' and enqueue(id, t[2], true) then return end
  end
end

-- `t`: the task's {limit_key, max_concurrency, limit_lent} when the caller has read them.
local function release_limit(id, t)
  t = t or redis.call('HMGET', k_task(id), 'limit_key', 'max_concurrency', 'limit_lent')
  local key, max = t[1], tonumber(t[2])
  if not key or not max then return end
  local rkey = k_limit_running(key)
  safe('SREM', rkey, id)
  if t[3] then redis.call('HDEL', k_task(id), 'limit_lent') end     -- lent (lend.lua)
  if safe('SCARD', rkey) < max then wake_limited(key) end
end

-- `f`: the task's fields as finish reads them (FINAL_FIELDS), when the caller has.
local function release_lease(id, node_id, f)
  redis.call('ZREM', K.leases, id)
  if node_id and node_id ~= '' then safe('SREM', k_node_tasks(node_id), id) end
  if f then
    release_resources(id, {f.held, f.shape, f.gpu_ids, f.lent})
    release_limit(id, {f.limit_key, f.max_concurrency, f.limit_lent})
  else
    release_resources(id)
    release_limit(id)
  end
end

-- The submitter's notice of a small successful result carries the result itself
-- ("<id>\n<blob>"), so its `get` needs no further round trip; everyone else gets the id.
-- Other waiters are looked up only when one registered (field 'waited', watch.lua).
-- All processes of a cluster run the same ftqueue: these flags are this version's protocol.
local function notify(id, inline_blob, n, waited)
  if n and n ~= '' then
    local item = id
    if inline_blob and #inline_blob <= INLINE_RESULT_MAX then item = id .. '\n' .. inline_blob end
    -- A listening client empties its list at every pop, so the list is new again and again:
    -- it expires NOTIFY_TTL_S after it was created (a gone client's list goes away).
    if safe('RPUSH', n, item) == 1 then redis.call('EXPIRE', n, NOTIFY_TTL_S) end
  end
  if not waited then return end
  local wkey = k_waiters(id)
  local waiters = safe('SMEMBERS', wkey)
  for _, w in ipairs(waiters) do
    safe('RPUSH', w, id)
    redis.call('EXPIRE', w, NOTIFY_TTL_S)
  end
  if #waiters > 0 then redis.call('DEL', wkey) end
end

-- Only a task whose hash says it has dependents ('dependents', set with each registration).
-- A member '@<k>' is partition k, where tasks wait for this one (link.lua): its end goes to
-- the outbox, for the caller to apply there (mirror.lua).
local function release_dependents(id, flagged)
  if not flagged then return end
  local dkey = k_dependents(id)
  local deps = safe('SMEMBERS', dkey)
  for _, d in ipairs(deps) do
    if string.sub(d, 1, 1) == '@' then
      redis.call('RPUSH', ks_outbox(), string.sub(d, 2) .. ' ' .. id)
      OUTBOX = true
    else
      local dk = k_task(d)
      local t = guarded('HMGET', dk, 'among the dependents of ' .. id, 'state', 'queue')
      -- A dependent whose record expired (cancelled, then past its lineage TTL) is gone: a
      -- count written there would make a record of it that never expires.
      if t and t[1] and redis.call('HINCRBY', dk, 'deps', -1) <= 0
          and t[1] == 'PENDING_ARGS_AVAIL' then
        make_ready(d, t[2], false)
      end
    end
  end
  if #deps > 0 then redis.call('DEL', dkey) end
end

-- Retention starts when a task ends: its result (or error) lives result_ttl_s, its lineage
-- (record, arguments, attempts, children) lineage_ttl_s, so a lost result can be rebuilt.
-- The attempts list exists only after a first attempt ended (attempt > 0: retry, requeue,
-- reconstruct), the children set only when the hash says so ('children', set by create):
-- a plain task expires neither.
local function set_retention(id, f)
  local result_ttl, lineage_ttl = tonumber(f.result_ttl_s) or 0, tonumber(f.lineage_ttl_s) or 0
  if result_ttl > 0 then
    if not f.result_stored then redis.call('EXPIRE', k_result(id), result_ttl) end
    for i = 0, (tonumber(f.items) or 0) - 1 do   -- values returned one by one (stream.lua)
      redis.call('EXPIRE', k_result(id .. '#' .. i), result_ttl)
    end
  end
  if lineage_ttl > 0 then
    redis.call('EXPIRE', k_task(id), lineage_ttl)
    redis.call('EXPIRE', k_args(id), lineage_ttl)
    if (tonumber(f.attempt) or 0) > 0 then redis.call('EXPIRE', k_attempts(id), lineage_ttl) end
    if f.children then redis.call('EXPIRE', k_children(id), lineage_ttl) end
  end
end

-- A commit's result (or error), stored with its retention at once: one write, no EXPIRE.
-- `f`: the task's FINAL_FIELDS (read_fields), told that its result is stored.
local function store_result(rkey, blob, f)
  local ttl = tonumber(f.result_ttl_s) or 0
  if ttl > 0 then
    redis.call('SET', rkey, blob, 'EX', ttl)
  else
    redis.call('SET', rkey, blob)
  end
  f.result_stored = true
end

-- The final attempt stays in the task hash (state, node, worker, times, error); only the
-- attempts that ended in a retry are appended to the attempts list.
-- Everything finish needs of the task, read at once.
local FINAL_FIELDS = {'node_id', 'notify', 'waited', 'held', 'shape', 'gpu_ids', 'lent',
                      'limit_key', 'max_concurrency', 'limit_lent', 'result_ttl_s',
                      'lineage_ttl_s', 'items', 'attempt', 'dependents', 'children', 'func'}

-- The task's fields `names` by name, and the caller's own fields (`...`, first in the same
-- HMGET) as HMGET returns them: a caller's read and finish's are one. With `found_in`, a
-- guarded read (nil, nil for a record of the wrong type).
local function read_fields(tkey, names, found_in, ...)
  local all = {...}
  local n_own = #all
  for _, name in ipairs(names) do all[#all + 1] = name end
  local got
  if found_in then
    got = guarded('HMGET', tkey, found_in, unpack(all))
    if not got then return nil, nil end
  else
    got = redis.call('HMGET', tkey, unpack(all))
  end
  local f = {}
  for i, name in ipairs(names) do f[name] = got[n_own + i] end
  return f, got
end

-- `f`: the task's FINAL_FIELDS by name when the caller read them (read_fields).
function finish(id, state, error_type, message, result_blob, f)  -- local (above)
  local tkey = k_task(id)
  f = f or read_fields(tkey, FINAL_FIELDS)
  redis.call('HSET', tkey, 'state', state, 'end_ms', NOW, 'error_type', error_type,
             'error_message', string.sub(message, 1, MESSAGE_MAX))
  release_lease(id, f.node_id, f)
  local stat = 'tasks:' .. state
  if error_type ~= '' then stat = stat .. ':' .. error_type end
  redis.call('HINCRBY', K.stats, stat, 1)
  count_summary(state, f.func, 1)
  if state == 'FAILED' then
    redis.call('ZADD', K.failed_index, NOW, id)
    count_recent('failed:' .. error_type)
  else
    count_recent('finished')
  end
  notify(id, result_blob, f.notify, f.waited)
  release_dependents(id, f.dependents)
  set_retention(id, f)
end

local function budget_left(id)
  local t = redis.call('HMGET', k_task(id), 'max_retries', 'retries')
  local max_retries = tonumber(t[1]) or 0
  return max_retries == -1 or (tonumber(t[2]) or 0) < max_retries
end

-- Back to the queue's front for a new attempt (after its retry delay, when charged);
-- `charge` says whether it uses the retry budget.
local function retry(id, error_type, message, charge)
  local tkey = k_task(id)
  local t = redis.call('HMGET', tkey, 'node_id', 'queue')
  record_attempt(id, 'FAILED', error_type, message)
  release_lease(id, t[1])
  local wait, used = 0, 0
  if charge then
    used = redis.call('HINCRBY', tkey, 'retries', 1)
    wait = retry_delay_ms(id, used)
  end
  redis.call('HINCRBY', tkey, 'attempt', 1)
  redis.call('HDEL', tkey, 'node_id', 'worker_id', 'start_ms', 'error_type', 'error_message')
  if wait > 0 then
    delay(id, t[2], NOW + wait)
  else
    redis.call('HSET', tkey, 'state', 'PENDING_NODE_ASSIGNMENT')
    -- A first retry goes to the queue's front (a task that met a dying worker or node runs
    -- again at once); one that has failed before waits its turn at the back, so a task that
    -- kills every worker taking it (with many retries) cannot keep its queue's workers
    -- crashing and respawning while the tasks behind it wait.
    enqueue(id, t[2], used <= 1)
  end
  redis.call('HINCRBY', K.stats, 'retries:' .. error_type, 1)
  redis.call('ZADD', K.failed_index, NOW, id)    -- it has a FAILED attempt row now
  count_recent('retries:' .. error_type)
end

-- A prefetched task that never started goes back unchanged: same attempt, nothing charged.
local function requeue_unstarted(id)
  local tkey = k_task(id)
  local t = redis.call('HMGET', tkey, 'node_id', 'queue')
  release_lease(id, t[1])
  redis.call('HSET', tkey, 'state', 'PENDING_NODE_ASSIGNMENT')
  redis.call('HDEL', tkey, 'node_id', 'worker_id', 'start_ms')
  enqueue(id, t[2], true)
end

-- The attempt holding the task was lost (worker or node died, or stopped on purpose).
-- `started`: the task was running (else it was only prefetched and goes back unchanged);
-- `charge`: the loss uses the retry budget. Callers have checked ownership.
local function fail_attempt(id, started, error_type, message, charge)
  if redis.call('HGET', k_task(id), 'cancel') then
    finish(id, 'FAILED', 'TASK_CANCELLED', 'cancelled; its attempt was lost: ' .. message)
    return 'cancelled'
  end
  if not started then
    requeue_unstarted(id)
    return 'released'
  end
  if not charge then
    retry(id, error_type, message, false)
    return 'requeued'
  end
  if budget_left(id) then
    retry(id, error_type, message, true)
    return 'retried'
  end
  finish(id, 'FAILED', error_type, message)
  return 'failed'
end

-- Submitting (submit, and a schedule's tick) -------------------------------------------------
-- Needs K.task_index, K.queues, K.nodes, K.spread (and, for a task that cannot be placed,
-- what finish needs: K.leases, K.stats, K.failed_index).

-- How many of deps are not final yet; the task is registered as a dependent of each. A
-- corrupt dependency counts as final: the task then fails on reading it, where it is seen.
local function wait_for(id, deps)
  local pending = 0
  for dep in string.gmatch(deps, '[^,]+') do
    local state = guarded('HGET', k_task(dep), 'as a dependency of ' .. id, 'state')
    if state and not TERMINAL[state] then
      safe('SADD', k_dependents(dep), id)
      redis.call('HSET', k_task(dep), 'dependents', '1')
      pending = pending + 1
    end
  end
  return pending
end

-- Whether a live node serves `queue` and can ever fit `shape` (its total resources).
local function can_host(node, queue, shape)
  local n = redis.call('HMGET', k_node(node), 'queues', 'resources')
  if not n[1] or not string.find(',' .. n[1] .. ',', ',' .. queue .. ',', 1, true) then
    return false
  end
  local total = cjson.decode(n[2] or '{}')
  for name, units in pairs(shape_units(shape)) do
    if (tonumber(total[name]) or 0) < units then return false end
  end
  return true
end

-- A scheduling strategy as a pin (docs/design.md, "Resources"): SPREAD pins to the live
-- nodes in turn (softly), node affinity to its node. Returns false when a hard affinity
-- names a node that cannot run it. Needs K.nodes and K.spread.
local function place(tkey, strategy, queue, shape)
  if strategy == 'SPREAD' then
    local n = redis.call('ZCARD', K.nodes)
    local start = redis.call('INCR', K.spread)
    for j = 0, n - 1 do
      local node = redis.call('ZRANGE', K.nodes, (start + j) % n, (start + j) % n)[1]
      if node and can_host(node, queue, shape) then
        redis.call('HSET', tkey, 'pin', node, 'pin_soft', '1')
        return true
      end
    end
    return true
  end
  local kind, node = string.match(strategy, '^(%a+):(.+)$')
  if node and redis.call('ZSCORE', K.nodes, node) and can_host(node, queue, shape) then
    local soft = '0'
    if kind == 'soft' then soft = '1' end
    redis.call('HSET', tkey, 'pin', node, 'pin_soft', soft)
    return true
  end
  return kind == 'soft'     -- soft falls back to any node
end

-- Queues (and their shapes) this script call has registered already: once per batch.
local REGISTERED = {}

local function register_queue(queue, shape)
  local seen = queue .. '@' .. (shape or '')
  if REGISTERED[seen] then return end
  REGISTERED[seen] = true
  redis.call('SADD', K.queues, queue)
  if shape then safe('SADD', k_shapes(queue), shape) end
end

-- Children of the parent whose record is `pkey` (in state `pstate`), for a recursive cancel:
-- flagged on the parent, so its end expires the set; a parent that has ended already (a
-- submit from an attempt that lost its task) gets a set that expires with it.
local function add_children(pkey, ckey, pstate, ids)
  for _, id in ipairs(ids) do safe('SADD', ckey, id) end
  redis.call('HSET', pkey, 'children', '1')
  if TERMINAL[pstate] then
    local ttl = redis.call('PTTL', pkey)
    if ttl > 0 then redis.call('PEXPIRE', ckey, ttl) end
  end
end

local function create(tkey, akey, id, queue, blob, deps, fields)
  local flat = {}
  local given = cjson.decode(fields)
  -- delay_ms (from now, on Redis's clock) or eta_ms (epoch) become the record's due_ms.
  local due = tonumber(given.eta_ms)
  if given.delay_ms then due = NOW + tonumber(given.delay_ms) end
  given.delay_ms, given.eta_ms = nil, nil
  if due then given.due_ms = tostring(due) end
  local strategy = given.strategy
  given.strategy = nil
  if deps ~= '' then given.dep_ids = deps end
  -- The common case (no dependency, no strategy, due now) is queued by the same HSET.
  local plain = deps == '' and not strategy and not (due and due > NOW)
  if plain then given.state = 'PENDING_NODE_ASSIGNMENT' end
  local func = given.func or '?'
  CREATED[func] = (CREATED[func] or 0) + 1
  for key, value in pairs(given) do
    flat[#flat + 1] = key
    flat[#flat + 1] = value
  end
  -- Fences start at the creation time (ms), not 0: after Redis lost its data a task
  -- submitted again is created later, so a lease of the old epoch (whose worker may
  -- still hold an outcome) cannot match the fence of a new attempt.
  redis.call('HSET', tkey, 'attempt', 0, 'retries', 0, 'fence', NOW, 'queue', queue,
             'created_ms', NOW, unpack(flat))
  redis.call('SET', akey, blob)
  redis.call('ZADD', K.task_index, NOW, id)
  local parent = given.parent_task_id
  if parent and parent ~= '' then
    -- A gone parent gets no set (nothing would expire it, and a cancel of it finds nothing
    -- to recurse into).
    local pkey = k_task(parent)
    local p = guarded('HMGET', pkey, 'as the parent of ' .. id, 'state', 'mirror')
    -- A parent of another partition (its mirror here, ftqueue/partitions.py) registers its
    -- children there (adopt.lua).
    local pstate = p and not p[2] and p[1]
    if pstate then add_children(pkey, k_children(parent), pstate, {id}) end
  end
  register_queue(queue, given.shape)
  if plain then
    enqueue(id, queue, false, {given.shape})
    return
  end
  if strategy and not place(tkey, strategy, queue, given.shape) then
    finish(id, 'FAILED', 'TASK_UNSCHEDULABLE_ERROR', 'no live node ' .. strategy ..
           ' can run it (NodeAffinitySchedulingStrategy with soft=False)')
    return
  end
  local pending = wait_for(id, deps)
  if pending > 0 then
    redis.call('HSET', tkey, 'state', 'PENDING_ARGS_AVAIL', 'deps', pending)
  else
    make_ready(id, queue, false)
  end
end
