-- ARGV[1]: JSON {server_id, account?}. Removes the schedule (its revision stays, so a
-- scheduler that planned for the old one can never claim a slot of a later one).
local a = cjson.decode(ARGV[1])
local key = 'server:' .. a.server_id
local srv = hgetall(key)
if srv.id == nil or (a.account ~= nil and srv.account ~= a.account) then
  return fail('not_found', 'Server ' .. a.server_id .. ' not found.')
end
if empty(srv.schedule) then
  return fail('not_found', 'Server ' .. srv.id .. ' has no schedule.')
end
redis.call('HDEL', key, 'schedule', 'schedule_next', 'last_run')
redis.call('ZREM', SCHEDULES_DUE, srv.id)
emit('schedule.deleted', srv.account, srv.id, nil, nil, now(), {})
return ok({})
