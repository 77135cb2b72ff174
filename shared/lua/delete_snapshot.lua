-- ARGV[1]: JSON {snapshot_id, account?, anywhere?} (anywhere: see drop_snapshot)
local a = cjson.decode(ARGV[1])
local snap = hgetall('snapshot:' .. a.snapshot_id)
if snap.id == nil or snap.deleted == '1' or (a.account ~= nil and snap.account ~= a.account) then
  return fail('not_found', 'Snapshot ' .. a.snapshot_id .. ' not found.')
end
if snap.protected == '1' then
  return fail('snapshot_protected',
    'Snapshot ' .. snap.id .. ' is protected; unprotect it (PATCH "protected": false) first.')
end
local reader = snap_active_reader(snap.id)
if reader ~= nil then
  return fail('snapshot_in_use',
    'Snapshot ' .. snap.id .. ' is being restored from (operation ' .. reader .. ').')
end
if snap.origin == 'safety' and snap.status == 'in_progress' then
  return fail('snapshot_in_use', 'Snapshot ' .. snap.id .. ' is the safety snapshot of restore ' ..
    'operation ' .. snap.operation_id .. ', being captured; it can be deleted once that ends.')
end
local t = now()
local cancelled = nil
if snap.status == 'in_progress' and not empty(snap.operation_id) then
  local op = hgetall('operation:' .. snap.operation_id)
  if op.id ~= nil and op_active(op.status) then
    op_set_status(op, 'cancelled', t)
    redis.call('HSET', 'operation:' .. op.id, 'error',
      error_json('cancelled', 'The snapshot was deleted while it was being created.'))
    server_release(op.server_id, op.id)
    hold_for_owed_work(op, false)
    cancelled = op.id
  end
end
local oid = drop_snapshot(snap, t, {cancelled_operation_id = cancelled}, a.anywhere)
return ok({operation_id = oid, cancelled_operation_id = cancelled,
  host = redis.call('HGET', 'operation:' .. oid, 'host')})
