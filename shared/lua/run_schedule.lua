-- ARGV[1]: JSON {server_id, rev, slot, next, at, slot_at (RFC 3339), name, drop, max,
-- anywhere?} (anywhere: where retention's deletions run, see drop_snapshot)
-- One scheduled run, claimed exactly once: the caller planned for revision `rev` whose
-- next slot is `slot`; whoever moves it to `next` first owns the run (every other worker
-- and host gets 'claimed'). Slots missed while no scheduler ran are all behind `next`,
-- so they are made up by this one run. Then, atomically: the server must be free; at the
-- limit, the scheduled snapshots in `drop` (what retention lets go once this run exists)
-- are deleted first; then the snapshot (origin schedule) and its create operation start.
-- A run that cannot proceed is recorded on last_run with a schedule.failed event.
local a = cjson.decode(ARGV[1])
local key = 'server:' .. a.server_id
local srv = hgetall(key)
if srv.id == nil or empty(srv.schedule) then
  redis.call('ZREM', SCHEDULES_DUE, a.server_id)
  return fail('gone', 'Server ' .. a.server_id .. ' has no schedule.')
end
if tonumber(srv.schedule_rev) ~= tonumber(a.rev) or tonumber(srv.schedule_next) ~= tonumber(a.slot) then
  return fail('claimed', 'This slot was claimed by another scheduler, or the schedule changed.')
end
local t = now()
redis.call('HSET', key, 'schedule_next', a.next)
redis.call('ZADD', SCHEDULES_DUE, a.next, srv.id)
local sched = cjson.decode(srv.schedule)

local function refuse(code, message)
  redis.call('HSET', key, 'last_run', cjson.encode({at = a.at, status = 'failed',
    error = {code = code, message = message}}))
  emit('schedule.failed', srv.account, srv.id, nil, nil, t,
    {code = code, message = message, slot = a.slot_at})
  return ok({run = false, code = code, message = message})
end

local code, message = server_busy(srv)
if code ~= nil then return refuse(code, message) end
local count = snapshot_count(srv.id)
local drop = {}
if count >= tonumber(a.max) then
  for _, id in ipairs(a.drop or {}) do
    local snap = hgetall('snapshot:' .. id)
    if retention_may_drop(snap, srv.id) then
      drop[#drop + 1] = snap
      if snap.status == 'available' then count = count - 1 end
    end
  end
  if count >= tonumber(a.max) then
    return refuse('snapshot_limit_reached', 'Server ' .. srv.id .. ' already has the maximum of ' ..
      a.max .. ' snapshots, and retention may delete none of them (a schedule never deletes ' ..
      'manual, safety or protected snapshots).')
  end
end
local deletes = {}
for _, snap in ipairs(drop) do
  deletes[#deletes + 1] = drop_snapshot(snap, t, {retention = true}, a.anywhere)
end
local sid = redis.call('INCR', 'seq:snapshot')
local extra = {stop_server = 0}
if sched.stop_server then extra.stop_server = 1 end
local oid = new_operation('snapshot.create', srv, sid, t, extra)
new_snapshot(srv, sid, oid, a.name, nil, 'schedule', t, {scheduled_at = a.at})
redis.call('HSET', key, 'active_op', oid)
emit('schedule.run', srv.account, srv.id, sid, oid, t, {slot = a.slot_at, rotated = #deletes})
return ok({run = true, snapshot_id = sid, operation_id = oid, delete_operation_ids = deletes})
