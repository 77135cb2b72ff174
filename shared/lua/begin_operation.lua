-- ARGV[1]: op id. queued|running → running; attempts += 1; started_at set once.
-- Returns ok=false code=terminal for finished operations, so a redelivered message is a no-op.
local op = hgetall('operation:' .. ARGV[1])
if op.id == nil then return fail('not_found', 'Operation ' .. ARGV[1] .. ' not found.') end
if not op_active(op.status) then
  return fail('terminal', 'Operation ' .. op.id .. ' is already ' .. op.status .. '.')
end
local t = now()
local first = op.status == 'queued'
op_set_status(op, 'running', t)
redis.call('HINCRBY', 'operation:' .. op.id, 'attempts', 1)
if empty(op.started_at) then redis.call('HSET', 'operation:' .. op.id, 'started_at', t) end
if first then
  emit('operation.started', op.account, op.server_id, op.snapshot_id, op.id, t, {type = op.type})
end
return ok({})
