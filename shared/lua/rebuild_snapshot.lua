-- ARGV[1]: JSON {snapshot_id, server_id, server_name, account, name, description?,
--   created_at, completed_at, size_mb (text), state_kind, placeholder_path}
-- Catalog rebuild (workers/catalog.py): puts back one committed snapshot found in the
-- repository, and its server when that is missing too. Never overwrites a record that
-- exists; raises the id counters so new ids never collide with rebuilt ones.
local a = cjson.decode(ARGV[1])
local t = now()
local sid, srv_id = tonumber(a.snapshot_id), tonumber(a.server_id)
local created_server = false
if redis.call('EXISTS', 'server:' .. srv_id) == 0 then
  -- The manifest does not hold the server's state path or power driver: the server comes
  -- back stopped, with a placeholder path that the restore job refuses, for an admin to fix.
  local state = cjson.encode({kind = a.state_kind, path = a.placeholder_path})
  redis.call('HSET', 'server:' .. srv_id, 'id', srv_id, 'name', a.server_name,
    'account', a.account, 'status', 'stopped', 'state', state, 'power', '{"kind":"none"}',
    'host', 'default', 'created_at', a.created_at, 'rebuilt', 1)
  redis.call('ZADD', 'idx:servers:all', srv_id, srv_id)
  redis.call('ZADD', 'idx:servers:account:' .. a.account, srv_id, srv_id)
  emit('server.rebuilt', a.account, srv_id, nil, nil, t, {name = a.server_name})
  created_server = true
end
if tonumber(redis.call('GET', 'seq:server') or '0') < srv_id then
  redis.call('SET', 'seq:server', srv_id)
end
if tonumber(redis.call('GET', 'seq:snapshot') or '0') < sid then
  redis.call('SET', 'seq:snapshot', sid)
end
if redis.call('EXISTS', 'snapshot:' .. sid) == 1 then
  return ok({snapshot = false, server = created_server})
end
snap_hset(sid, 'id', sid, 'server_id', srv_id, 'server_name', a.server_name,
  'account', a.account, 'name', a.name, 'status', 'available', 'progress', 100,
  'size_mb', a.size_mb, 'created_at', a.created_at, 'completed_at', a.completed_at,
  'deleted', 0, 'rebuilt', 1)
if a.description ~= nil then snap_hset(sid, 'description', a.description) end
idx_add('snapshots', sid, a.account, srv_id, 'available')
emit('snapshot.rebuilt', a.account, srv_id, sid, nil, t, {name = a.name})
return ok({snapshot = true, server = created_server})
