-- ARGV[1]: JSON {snapshot_id, account?, start_after?}
local a = cjson.decode(ARGV[1])
local snap = hgetall('snapshot:' .. a.snapshot_id)
if snap.id == nil or snap.deleted == '1' or (a.account ~= nil and snap.account ~= a.account) then
  return fail('not_found', 'Snapshot ' .. a.snapshot_id .. ' not found.')
end
if snap.status ~= 'available' then
  return fail('snapshot_not_available',
    'Snapshot ' .. snap.id .. ' is ' .. snap.status .. ', only available snapshots can be restored.')
end
local srv = hgetall('server:' .. snap.server_id)
if srv.id == nil then
  return fail('not_found', 'Snapshot ' .. a.snapshot_id .. ' not found.')
end
if srv.status == 'restoring' or not empty(srv.active_op) then
  return fail('server_invalid_state',
    'Server ' .. srv.id .. ' is being restored or has another operation in progress.')
end
local t = now()
local extra = {}
if a.start_after ~= nil then
  extra.start_after = 0
  if a.start_after then extra.start_after = 1 end
end
local oid = new_operation('snapshot.restore', srv, snap.id, t, extra)
redis.call('HSET', 'server:' .. srv.id, 'status', 'restoring', 'prior_status', srv.status,
  'active_op', oid)
redis.call('HSET', 'snapshot:' .. snap.id, 'in_use_by', oid)
emit('restore.started', srv.account, srv.id, snap.id, oid, t, {prior_status = srv.status})
return ok({operation_id = oid, server_id = srv.id, server_name = srv.name,
  snapshot_id = snap.id, snapshot_name = snap.name, snapshot_created_at = snap.created_at})
