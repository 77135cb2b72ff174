-- ARGV: op id. The worker reclaimed the storage; the snapshot record goes away too.
local op = hgetall('operation:' .. ARGV[1])
if op.id == nil or op.type ~= 'snapshot.delete' or not op_active(op.status) then
  return fail('conflict', 'operation not active')
end
local t = now()
op_set_status(op, 'succeeded', t)
redis.call('HSET', 'operation:' .. op.id, 'progress', 100)
redis.call('DEL', 'snapshot:' .. op.snapshot_id, 'snapshot:' .. op.snapshot_id .. ':readers')
emit('snapshot.reclaimed', op.account, op.server_id, op.snapshot_id, op.id, t, {})
return ok({})
