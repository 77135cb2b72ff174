-- ARGV[1]: JSON {server_id, account?, name, description?, stop_server, max}
local a = cjson.decode(ARGV[1])
local srv = hgetall('server:' .. a.server_id)
if srv.id == nil or (a.account ~= nil and srv.account ~= a.account) then
  return fail('not_found', 'Server ' .. a.server_id .. ' not found.')
end
if srv.status == 'restoring' then
  return fail('server_invalid_state', 'Server ' .. srv.id .. ' is being restored.')
end
if not empty(srv.active_op) then
  return fail('server_invalid_state',
    'Server ' .. srv.id .. ' has another operation in progress (operation ' .. srv.active_op .. ').')
end
local base = 'idx:snapshots:server:' .. srv.id .. ':status:'
local count = redis.call('ZCARD', base .. 'in_progress') + redis.call('ZCARD', base .. 'available')
if count >= tonumber(a.max) then
  return fail('snapshot_limit_reached',
    'Server ' .. srv.id .. ' already has the maximum of ' .. a.max .. ' snapshots.')
end
local t = now()
local sid = redis.call('INCR', 'seq:snapshot')
local extra = {stop_server = 0}
if a.stop_server then extra.stop_server = 1 end
local oid = new_operation('snapshot.create', srv, sid, t, extra)
local skey = 'snapshot:' .. sid
redis.call('HSET', skey, 'id', sid, 'server_id', srv.id, 'server_name', srv.name,
  'account', srv.account, 'name', a.name, 'status', 'in_progress', 'progress', 0,
  'created_at', t, 'operation_id', oid, 'deleted', 0)
if a.description ~= nil then redis.call('HSET', skey, 'description', a.description) end
idx_add('snapshots', sid, srv.account, srv.id, 'in_progress')
redis.call('HSET', 'server:' .. srv.id, 'active_op', oid)
emit('snapshot.created', srv.account, srv.id, sid, oid, t, {name = a.name})
return ok({snapshot_id = sid, operation_id = oid, created_at = t, server_name = srv.name})
