-- ARGV: op id, progress 0..100. Monotonic: a lower value than the stored one is ignored.
local op = hgetall('operation:' .. ARGV[1])
if op.id == nil or not op_active(op.status) then return ok({changed = false}) end
local p = math.max(0, math.min(100, math.floor(tonumber(ARGV[2]))))
if p <= tonumber(op.progress or '0') then return ok({changed = false}) end
local t = now()
redis.call('HSET', 'operation:' .. op.id, 'progress', p)
if op.type == 'snapshot.create' and not empty(op.snapshot_id) then
  if redis.call('HGET', 'snapshot:' .. op.snapshot_id, 'status') == 'in_progress' then
    snap_hset(op.snapshot_id, 'progress', p)
  end
  emit('snapshot.progress', op.account, op.server_id, op.snapshot_id, op.id, t, {progress = p})
elseif op.type == 'snapshot.restore' then
  emit('restore.progress', op.account, op.server_id, op.snapshot_id, op.id, t, {progress = p})
end
return ok({changed = true})
