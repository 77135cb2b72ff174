-- ARGV[1]: JSON {snapshot_id, account?, name?, description?, clear_description?, protected?}
-- PATCH: renames, describes, protects or unprotects a snapshot (any status).
local a = cjson.decode(ARGV[1])
local snap = hgetall('snapshot:' .. a.snapshot_id)
if snap.id == nil or snap.deleted == '1' or (a.account ~= nil and snap.account ~= a.account) then
  return fail('not_found', 'Snapshot ' .. a.snapshot_id .. ' not found.')
end
local changed = {}
if a.name ~= nil then
  snap_hset(snap.id, 'name', a.name)
  changed.name = a.name
end
if a.clear_description then
  snap_hdel(snap.id, 'description')
  changed.description = cjson.null
elseif a.description ~= nil then
  snap_hset(snap.id, 'description', a.description)
  changed.description = a.description
end
if a.protected ~= nil then
  local flag = 0
  if a.protected then flag = 1 end
  snap_hset(snap.id, 'protected', flag)
  changed.protected = a.protected
end
emit('snapshot.updated', snap.account, snap.server_id, snap.id, nil, now(), changed)
return ok({})
