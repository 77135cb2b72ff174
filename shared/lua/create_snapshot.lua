-- ARGV[1]: JSON {server_id, account?, name, description?, stop_server, max,
--   idem_key?, idem_claim?, idem_fingerprint?, idem_ttl? (_lib.lua idem_ok)}
local a = cjson.decode(ARGV[1])
local taken = idem_refusal(a)
if taken ~= nil then return taken end
local srv = hgetall('server:' .. a.server_id)
if srv.id == nil or (a.account ~= nil and srv.account ~= a.account) then
  return fail('not_found', 'Server ' .. a.server_id .. ' not found.')
end
local code, message = snapshot_refusal(srv, a.max)
if code ~= nil then return fail(code, message) end
local t = now()
local sid = redis.call('INCR', 'seq:snapshot')
local extra = {stop_server = 0}
if a.stop_server then extra.stop_server = 1 end
local oid = new_operation('snapshot.create', srv, sid, t, extra)
new_snapshot(srv, sid, oid, a.name, a.description, 'manual', t)
redis.call('HSET', 'server:' .. srv.id, 'active_op', oid)
return idem_ok(a, {snapshot_id = sid, operation_id = oid, created_at = t, server_name = srv.name,
  host = host_of(srv)})
