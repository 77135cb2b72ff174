-- ARGV: op id, size_mb (text, 2 decimals), warnings (JSON list), and for a scheduled
-- snapshot the ids its retention drops now that it exists (JSON list; each re-checked),
-- '1' when those deletions may run on any host (see drop_snapshot).
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
snap_hset(snap.id, 'size_mb', ARGV[2], 'progress', 100, 'completed_at', t)
op_set_status(op, 'succeeded', t)
redis.call('HSET', 'operation:' .. op.id, 'progress', 100)
server_release(op.server_id, op.id)
emit('snapshot.available', op.account, op.server_id, snap.id, op.id, t,
  {size_mb = tonumber(ARGV[2]), warnings = cjson.decode(ARGV[3])})
local deletes = {}
if snap.origin == 'schedule' then
  local skey = 'server:' .. op.server_id
  if not empty(redis.call('HGET', skey, 'schedule')) then
    redis.call('HSET', skey, 'last_run', cjson.encode({status = 'succeeded',
      at = tonumber(snap.scheduled_at or snap.created_at), snapshot_id = tonumber(snap.id)}))
  end
  for _, id in ipairs(cjson.decode(ARGV[4] or '[]')) do
    local old = hgetall('snapshot:' .. id)
    if old.id ~= snap.id and retention_may_drop(old, op.server_id) then
      deletes[#deletes + 1] = drop_snapshot(old, t, {retention = true}, ARGV[5] == '1')
    end
  end
end
return ok({delete_operation_ids = deletes})
