-- ARGV: op id, owner (worker process id .. '/' .. thread), owner process id (the broker id
-- whose heartbeat proves the owner alive), heartbeats key, heartbeat timeout (ms), the
-- claiming worker's host, and this claim's own id (random): a claim retried after it
-- applied and its answer was lost (Redis restarting) finds its id and changes nothing.
-- An operation of host '*' (see drop_snapshot) is any host's.
-- begin_operation plus a lease: an operation running under a live owner is refused
-- ('busy'), so a duplicate message never runs a job twice at the same time; an owner whose
-- heartbeat is stale (or gone) is dead and its operation is taken over.
local op = hgetall('operation:' .. ARGV[1])
if op.id == nil then return fail('not_found', 'Operation ' .. ARGV[1] .. ' not found.') end
if not op_active(op.status) then
  return fail('terminal', 'Operation ' .. op.id .. ' is already ' .. op.status .. '.')
end
if host_of(op) ~= ARGV[6] and host_of(op) ~= '*' then
  -- Only the operation's own host may touch its server (a message on the wrong queue).
  return fail('wrong_host', 'Operation ' .. op.id .. ' runs on host ' .. host_of(op) .. '.')
end
if op.status == 'running' and op.owner == ARGV[2] and not empty(ARGV[7])
    and op.claim_id == ARGV[7] then
  return ok({attempts = tonumber(op.attempts)})
end
if op.status == 'running' and not empty(op.owner) and op.owner ~= ARGV[2] then
  if owner_alive(op, ARGV[4], ARGV[5]) then
    return fail('busy', 'Operation ' .. op.id .. ' is being run by ' .. op.owner .. '.')
  end
end
local t = now()
local first = op.status == 'queued'
op_set_status(op, 'running', t)
local key = 'operation:' .. op.id
local attempts = redis.call('HINCRBY', key, 'attempts', 1)
redis.call('HSET', key, 'owner', ARGV[2], 'owner_process', ARGV[3], 'owner_host', ARGV[6],
  'claimed_at', t, 'claim_id', ARGV[7] or '')
if empty(op.started_at) then redis.call('HSET', key, 'started_at', t) end
if first then
  emit('operation.started', op.account, op.server_id, op.snapshot_id, op.id, t, {type = op.type})
end
return ok({attempts = attempts})
