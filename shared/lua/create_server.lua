-- ARGV[1]: JSON {name, account, state (JSON text), power (JSON text), host, status,
--   hooks? (JSON text)}
local a = cjson.decode(ARGV[1])
local t = now()
local id = redis.call('INCR', 'seq:server')
redis.call('HSET', 'server:' .. id, 'id', id, 'name', a.name, 'account', a.account,
  'status', a.status, 'state', a.state, 'power', a.power, 'host', a.host, 'created_at', t)
if a.hooks ~= nil then redis.call('HSET', 'server:' .. id, 'hooks', a.hooks) end
redis.call('ZADD', 'idx:servers:all', id, id)
redis.call('ZADD', 'idx:servers:account:' .. a.account, id, id)
emit('server.created', a.account, id, nil, nil, t, {name = a.name})
return ok({server_id = id, created_at = t})
