-- ARGV[1]: JSON {server_id, account?, anywhere?}. Deletes the server and queues the deletion
-- of every snapshot it still has (anywhere: see drop_snapshot); refuses while an operation
-- on it is active or its power is held, or while a restore reads one of its snapshots.
-- Answers the host the deletions run on.
local a = cjson.decode(ARGV[1])
local srv = hgetall('server:' .. a.server_id)
if srv.id == nil or (a.account ~= nil and srv.account ~= a.account) then
  return fail('not_found', 'Server ' .. a.server_id .. ' not found.')
end
if srv.status == 'restoring' or not empty(srv.active_op) then
  return fail('server_invalid_state',
    'Server ' .. srv.id .. ' has an operation in progress; wait for it to finish.')
end
-- held for a job that ended (cancelled, the deadline) but still runs the server's post
-- hook or starts it again (hold_for_owed_work): deleted meanwhile, that job found no
-- server to start, and the machine stayed stopped
local code, message = server_busy(srv)
if code ~= nil then return fail(code, message) end
local ids = redis.call('ZRANGE', 'idx:snapshots:server:' .. srv.id, 0, -1)
for _, sid in ipairs(ids) do
  if redis.call('HGET', 'snapshot:' .. sid, 'protected') == '1' then
    return fail('snapshot_protected', 'Server ' .. srv.id .. ' has protected snapshot ' .. sid ..
      '; unprotect it before deleting the server.')
  end
  -- As DELETE of the snapshot itself: a restore (a clone into another server) reading it
  -- would lose its data, and its retry the manifest.
  local reader = snap_active_reader(sid)
  if reader ~= nil then
    return fail('snapshot_in_use', 'Server ' .. srv.id .. ' has snapshot ' .. sid ..
      ', which a restore is reading (operation ' .. reader .. '); wait for it to finish.')
  end
end
local t = now()
local ops = {}
for _, sid in ipairs(ids) do
  local snap = hgetall('snapshot:' .. sid)
  if snap.id ~= nil then
    ops[#ops + 1] = drop_snapshot(snap, t, {server_deleted = true}, a.anywhere)
  end
end
redis.call('DEL', 'server:' .. srv.id)
redis.call('ZREM', SCHEDULES_DUE, srv.id)
redis.call('ZREM', 'idx:servers:all', srv.id)
redis.call('ZREM', 'idx:servers:account:' .. srv.account, srv.id)
emit('server.deleted', srv.account, srv.id, nil, nil, t, {})
return ok({delete_operation_ids = ops, host = a.anywhere and '*' or host_of(srv)})
