-- ARGV: op id, size_mb (text, 2 decimals), warnings (JSON list).
local op = hgetall('operation:' .. ARGV[1])
if op.id == nil or op.type ~= 'snapshot.create' or not op_active(op.status) then
  return fail('conflict', 'operation not active')
end
local snap = hgetall('snapshot:' .. op.snapshot_id)
if snap.id == nil or snap.deleted == '1' or snap.status ~= 'in_progress' then
  return fail('conflict', 'snapshot no longer in progress')
end
local t = now()
snap_set_status(snap, 'available')
redis.call('HSET', 'snapshot:' .. snap.id, 'size_mb', ARGV[2], 'progress', 100, 'completed_at', t)
op_set_status(op, 'succeeded', t)
redis.call('HSET', 'operation:' .. op.id, 'progress', 100)
server_release(op.server_id, op.id)
emit('snapshot.available', op.account, op.server_id, snap.id, op.id, t,
  {size_mb = tonumber(ARGV[2]), warnings = cjson.decode(ARGV[3])})
return ok({})
