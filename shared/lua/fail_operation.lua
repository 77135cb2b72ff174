-- ARGV: op id, error code, error message, server status ('' = put back the prior one),
-- and optionally a time (epoch s): only fail the operation if it started (or, never
-- started, was created) at or before it; the reaper's deadline is this compare-and-set;
-- and '1' when the failing job has settled the server's power itself (its hold ends; a
-- capture's job has started the server it stopped, or could not).
local op = hgetall('operation:' .. ARGV[1])
if op.id == nil or not op_active(op.status) then
  return fail('conflict', 'operation not active')
end
if not empty(ARGV[5]) then
  local since = op.started_at
  if empty(since) then since = op.created_at end
  if tonumber(since) > tonumber(ARGV[5]) then return fail('conflict', 'within its deadline') end
end
local t = now()
local err = error_json(ARGV[2], ARGV[3])
op_set_status(op, 'failed', t)
redis.call('HSET', 'operation:' .. op.id, 'error', err)
local etype = 'operation.failed'
if op.type == 'snapshot.create' then
  etype = 'snapshot.failed'
  local snap = hgetall('snapshot:' .. op.snapshot_id)
  if snap.id ~= nil and snap.status == 'in_progress' then
    snap_set_status(snap, 'failed')
    snap_hset(snap.id, 'error', err, 'completed_at', t)
    local skey = 'server:' .. op.server_id
    if snap.origin == 'schedule' and not empty(redis.call('HGET', skey, 'schedule')) then
      redis.call('HSET', skey, 'last_run', cjson.encode({status = 'failed',
        at = tonumber(snap.scheduled_at or snap.created_at), snapshot_id = tonumber(snap.id),
        error = {code = ARGV[2], message = ARGV[3]}}))
      emit('schedule.failed', op.account, op.server_id, snap.id, op.id, t,
        {code = ARGV[2], message = ARGV[3]})
    end
  end
  server_release(op.server_id, op.id)
elseif op.type == 'snapshot.restore' then
  etype = 'restore.failed'
  local skey = 'server:' .. op.server_id
  local srv = hgetall(skey)
  if srv.status == 'restoring' then
    local status = ARGV[4]
    if empty(status) then status = srv.prior_status end
    if empty(status) then status = 'stopped' end
    redis.call('HSET', skey, 'status', status)
    redis.call('HDEL', skey, 'prior_status')
  end
  server_release(op.server_id, op.id)
  -- its own job settled the power (power_failed): the hold it took for that ends with it,
  -- as in complete_restore (not when the reaper fails it: the job may be starting it)
  if ARGV[6] == '1' then end_own_power_hold(op) end
  snap_remove_reader(op.snapshot_id, op.id)
  if not empty(op.safety_snapshot_id) then
    -- The restore never started without its safety snapshot: that one failed with it.
    local safety = hgetall('snapshot:' .. op.safety_snapshot_id)
    if safety.id ~= nil and safety.status == 'in_progress' then
      snap_set_status(safety, 'failed')
      snap_hset(safety.id, 'error', err, 'completed_at', t)
      emit('snapshot.failed', op.account, op.server_id, safety.id, op.id, t,
        {code = ARGV[2], message = ARGV[3]})
    end
  end
  if not empty(op.source_server_id) then
    emit('clone.failed', op.account, op.source_server_id, op.snapshot_id, op.id, t,
      {target_server_id = tonumber(op.server_id), code = ARGV[2], message = ARGV[3]})
  end
end
-- failed by the reaper while its job still runs its hooks or owes its server a start (a
-- job failing it itself has run its post hook by then, and settled the power: '1')
hold_for_owed_work(op, ARGV[6] == '1')
emit(etype, op.account, op.server_id, op.snapshot_id, op.id, t,
  {code = ARGV[2], message = ARGV[3]})
return ok({})
