-- ARGV[1]: JSON {server_id, account?, cron, timezone, retention, stop_server, next}
-- PUT: the server's schedule (JSON in its hash), its next slot and a new revision.
local a = cjson.decode(ARGV[1])
local key = 'server:' .. a.server_id
local srv = hgetall(key)
if srv.id == nil or (a.account ~= nil and srv.account ~= a.account) then
  return fail('not_found', 'Server ' .. a.server_id .. ' not found.')
end
local t = now()
local created = t
if not empty(srv.schedule) then created = cjson.decode(srv.schedule).created_at end
local sched = {cron = a.cron, timezone = a.timezone, retention = a.retention,
  stop_server = a.stop_server, created_at = created, updated_at = t}
redis.call('HSET', key, 'schedule', cjson.encode(sched), 'schedule_next', a.next)
local rev = redis.call('HINCRBY', key, 'schedule_rev', 1)
redis.call('ZADD', SCHEDULES_DUE, a.next, srv.id)
emit('schedule.updated', srv.account, srv.id, nil, nil, t, {cron = a.cron, timezone = a.timezone})
return ok({rev = rev})
