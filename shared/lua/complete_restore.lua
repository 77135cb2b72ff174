-- ARGV: op id, final server status ('running'|'stopped').
local op = hgetall('operation:' .. ARGV[1])
if op.id == nil or op.type ~= 'snapshot.restore' or not op_active(op.status) then
  return fail('conflict', 'operation not active')
end
local t = now()
op_set_status(op, 'succeeded', t)
redis.call('HSET', 'operation:' .. op.id, 'progress', 100)
local skey = 'server:' .. op.server_id
if redis.call('HGET', skey, 'status') == 'restoring' then
  redis.call('HSET', skey, 'status', ARGV[2])
  redis.call('HDEL', skey, 'prior_status')
end
server_release(op.server_id, op.id)
end_own_power_hold(op)
snap_remove_reader(op.snapshot_id, op.id)
emit('restore.succeeded', op.account, op.server_id, op.snapshot_id, op.id, t,
  {server_status = ARGV[2], source_server_id = tonumber(op.source_server_id)})
if not empty(op.source_server_id) then
  emit('clone.succeeded', op.account, op.source_server_id, op.snapshot_id, op.id, t,
    {target_server_id = tonumber(op.server_id)})
end
return ok({})
