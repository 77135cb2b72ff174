-- ARGV[1]: JSON {snapshot_id, account?, start_after?, target_id?, safety?, safety_name?, max,
--   idem_key?, idem_claim?, idem_fingerprint?, idem_ttl? (_lib.lua idem_ok)}
-- Restores a snapshot into its own server or, with target_id, into another server of the
-- same account and state kind (a clone: the target's power driver and host run it). With
-- safety, the target's current state is first captured as a snapshot of origin 'safety'
-- by the same operation; it counts toward the limit, checked here, so a full limit
-- refuses the request and nothing starts.
local a = cjson.decode(ARGV[1])
local taken = idem_refusal(a)
if taken ~= nil then return taken end
local snap = hgetall('snapshot:' .. a.snapshot_id)
if snap.id == nil or snap.deleted == '1' or (a.account ~= nil and snap.account ~= a.account) then
  return fail('not_found', 'Snapshot ' .. a.snapshot_id .. ' not found.')
end
if snap.status ~= 'available' then
  return fail('snapshot_not_available',
    'Snapshot ' .. snap.id .. ' is ' .. snap.status .. ', only available snapshots can be restored.')
end
local source = hgetall('server:' .. snap.server_id)
local srv = source
local clone = a.target_id ~= nil and tostring(a.target_id) ~= snap.server_id
if clone then
  srv = hgetall('server:' .. a.target_id)
  if srv.id == nil or (a.account ~= nil and srv.account ~= a.account) then
    return fail('not_found', 'Server ' .. a.target_id .. ' not found.')
  end
  if srv.account ~= snap.account then
    return fail('invalid_request', 'server_id: server ' .. srv.id ..
      ' belongs to another account than snapshot ' .. snap.id .. '.')
  end
  if source.id ~= nil then
    local want, have = cjson.decode(source.state).kind, cjson.decode(srv.state).kind
    if want ~= have then
      -- "an image", "a directory"
      local function a(kind) return (kind == 'image' and 'an ' or 'a ') .. kind end
      return fail('invalid_request', 'server_id: server ' .. srv.id .. ' holds ' .. a(have) ..
        ' state; snapshot ' .. snap.id .. ' is of ' .. a(want) .. ' state.')
    end
  end
end
if srv.id == nil then
  return fail('not_found', 'Snapshot ' .. a.snapshot_id .. ' not found.')
end
local code, message = server_busy(srv)
if code ~= nil then return fail(code, message) end
if a.safety and snapshot_count(srv.id) >= tonumber(a.max) then
  return fail('snapshot_limit_reached', 'Server ' .. srv.id .. ' already has the maximum of ' ..
    a.max .. ' snapshots: no room for the safety snapshot.')
end
local t = now()
local extra = {}
if a.start_after ~= nil then
  extra.start_after = 0
  if a.start_after then extra.start_after = 1 end
end
local safety = nil
if a.safety then
  safety = redis.call('INCR', 'seq:snapshot')
  extra.safety_snapshot_id = safety
end
if clone then extra.source_server_id = snap.server_id end
local oid = new_operation('snapshot.restore', srv, snap.id, t, extra)
if safety ~= nil then
  new_snapshot(srv, safety, oid, a.safety_name, nil, 'safety', t, {})
end
redis.call('HSET', 'server:' .. srv.id, 'status', 'restoring', 'prior_status', srv.status,
  'active_op', oid)
snap_add_reader(snap.id, oid)
local data = {prior_status = srv.status, safety_snapshot_id = safety}
if clone then
  data.source_server_id = tonumber(snap.server_id)
  emit('clone.started', snap.account, snap.server_id, snap.id, oid, t,
    {target_server_id = tonumber(srv.id), target_server_name = srv.name})
end
emit('restore.started', srv.account, srv.id, snap.id, oid, t, data)
return idem_ok(a, {operation_id = oid, server_id = srv.id, server_name = srv.name,
  snapshot_id = snap.id, snapshot_name = snap.name, snapshot_created_at = snap.created_at,
  safety_snapshot_id = safety, host = host_of(srv)})
