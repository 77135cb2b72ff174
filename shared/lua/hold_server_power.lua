-- ARGV: server id, operation id, seconds. A job puts its server's power back (starts it
-- again after a stop_server capture, settles it at a restore's end) only
-- while no other operation holds the server: a delete of the snapshot being captured, or
-- the reaper, ends the operation and frees the server at once, and a restore that took it
-- since is replacing the state, which a start would run the server on. The power is held
-- for that many seconds (set_server_power with this operation's id ends it sooner), and no
-- operation starts on the server meanwhile (_lib.lua server_busy).
local srv = hgetall('server:' .. ARGV[1])
if srv.id == nil then return fail('not_found', 'Server ' .. ARGV[1] .. ' not found.') end
if (srv.status == 'restoring' or not empty(srv.active_op)) and srv.active_op ~= ARGV[2] then
  return fail('server_invalid_state', 'Server ' .. srv.id .. ' is held by operation ' ..
    (srv.active_op or '?') .. '.')
end
local key = 'power_hold:' .. srv.id
local held = redis.call('GET', key)
if held and held ~= ARGV[2] then
  return fail('server_invalid_state', 'Server ' .. srv.id .. ' is being started by operation ' ..
    held .. '.')
end
redis.call('SET', key, ARGV[2], 'EX', ARGV[3])
return ok()
