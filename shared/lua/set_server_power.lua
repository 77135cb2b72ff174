-- ARGV: server id, 'running'|'stopped', and the operation whose power hold
-- (hold_server_power.lua) this ends, if any. A worker's observation; never overrides a
-- restore.
local key = 'server:' .. ARGV[1]
if not empty(ARGV[3]) then
  if redis.call('GET', 'power_hold:' .. ARGV[1]) == ARGV[3] then
    redis.call('DEL', 'power_hold:' .. ARGV[1])
  end
  -- a stop_server capture's start owed is paid (or failed): nothing to hold for any more
  redis.call('HDEL', 'operation:' .. ARGV[3], 'server_stopped', 'start_hold_s')
end
local current = redis.call('HGET', key, 'status')
if not current or current == 'restoring' or current == ARGV[2] then return ok({changed = false}) end
local t = now()
redis.call('HSET', key, 'status', ARGV[2])
local account = redis.call('HGET', key, 'account')
emit('server.power', account, ARGV[1], nil, nil, t, {status = ARGV[2]})
return ok({changed = true})
