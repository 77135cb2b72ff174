-- ARGV: restore op id, size_mb (text, 2 decimals), warnings (JSON list). The restore's
-- safety snapshot is committed: it becomes available, and the restore may go on.
local op = hgetall('operation:' .. ARGV[1])
if op.id == nil or op.type ~= 'snapshot.restore' or not op_active(op.status) then
  return fail('conflict', 'operation not active')
end
local snap = hgetall('snapshot:' .. (op.safety_snapshot_id or ''))
if snap.id == nil or snap.deleted == '1' then return fail('conflict', 'no safety snapshot') end
if snap.status == 'available' then return ok({}) end
if snap.status ~= 'in_progress' then return fail('conflict', 'safety snapshot ' .. snap.status) end
local t = now()
snap_set_status(snap, 'available')
snap_hset(snap.id, 'size_mb', ARGV[2], 'progress', 100, 'completed_at', t)
emit('snapshot.available', op.account, op.server_id, snap.id, op.id, t,
  {size_mb = tonumber(ARGV[2]), warnings = cjson.decode(ARGV[3]), origin = 'safety'})
return ok({})
