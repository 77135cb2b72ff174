-- Shared helpers, prepended to every script (scripts.py concatenates them).
-- Every status change in the service happens in one of these scripts, so each one is a
-- compare-and-set: it reads the current state, checks it, writes, and appends an event,
-- all atomically. Keys are not passed in KEYS because the set touched depends on the
-- data read (standalone Redis only, not cluster).

local function now()
  local t = redis.call('TIME')
  return tonumber(t[1])
end

local function hgetall(key)
  local flat = redis.call('HGETALL', key)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

local function fail(code, message)
  return cjson.encode({ok = false, code = code, message = message})
end

local function ok(t)
  t = t or {}
  t.ok = true
  return cjson.encode(t)
end

-- Idempotency-Key (api/idempotency.py). A transition started under a key runs only while
-- the key holds this request's claim (or nothing: the claim lapsed and nobody took it), and
-- records its answer under the key in the same script, so the key and the transition
-- commit together: a web process killed after the script leaves a record that a retry
-- answers from, instead of a lapsing claim after which a retry runs it again.
local function idem_refusal(a)
  if a.idem_key == nil then return nil end
  local held = redis.call('GET', a.idem_key)
  if held and cjson.decode(held).claim ~= a.idem_claim then
    return fail('request_in_progress', 'Another request with this Idempotency-Key ran first.')
  end
  return nil
end

local function idem_ok(a, t)
  local answer = ok(t)
  if a.idem_key ~= nil then
    redis.call('SET', a.idem_key, cjson.encode({fingerprint = a.idem_fingerprint,
      state = 'committed', claim = a.idem_claim, answer = answer}), 'EX', a.idem_ttl)
  end
  return answer
end

local function empty(v)
  return v == nil or v == ''
end

local function emit(etype, account, server_id, snapshot_id, operation_id, at, data)
  local payload = '{}'
  if data ~= nil then payload = cjson.encode(data) end
  redis.call('XADD', 'events', 'MAXLEN', '~', '100000', '*',
    'type', etype,
    'account', account or '',
    'server_id', tostring(server_id or ''),
    'snapshot_id', tostring(snapshot_id or ''),
    'operation_id', tostring(operation_id or ''),
    'at', tostring(at),
    'data', payload)
end

-- Every write to a snapshot's hash goes through snap_hset / snap_hdel, which bump its `rev`
-- (a counter of the hash's versions): a web process keeps each listed snapshot's rendered
-- JSON by (id, rev) (api/views.py RowViews) and renders it again only when rev moved.
-- tests/e2e/test_listing_views.py checks that no script writes a snapshot hash otherwise.
--
-- Each also bumps the listing version of the snapshot's account and the all-accounts one
-- (keys.py snapshot_listing_version): the web process keeps whole rendered pages of the
-- snapshot list by version (api/views.py RowViews.kept_page) and answers a list whose version
-- has not moved from them. A version that is missing starts from Redis's clock in
-- microseconds, so a key lost (a flushed or evicted Redis) never comes back at a value an
-- earlier page was kept under. Once per account and script run.
local listing_bumped = {}
local function snap_listing_changed(account)
  if not account or listing_bumped[account] then return end
  listing_bumped[account] = true
  for _, k in ipairs({'ver:snapshots:account:' .. account, 'ver:snapshots:all'}) do
    if redis.call('EXISTS', k) == 0 then
      local t = redis.call('TIME')
      redis.call('SET', k, string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2])))
    end
    redis.call('INCR', k)
  end
end

local function snap_hset(id, ...)
  local key = 'snapshot:' .. id
  redis.call('HSET', key, ...)
  redis.call('HINCRBY', key, 'rev', 1)
  snap_listing_changed(redis.call('HGET', key, 'account'))
end

local function snap_hdel(id, ...)
  local key = 'snapshot:' .. id
  if redis.call('HDEL', key, ...) > 0 then
    redis.call('HINCRBY', key, 'rev', 1)
    snap_listing_changed(redis.call('HGET', key, 'account'))
  end
end

-- Listing indexes: for each kind, one sorted set (score = id, so newest first is a
-- reverse range) for all, per account and per server, each also split by status.
local function idx_bases(kind, account, server_id)
  return {'idx:' .. kind .. ':all',
          'idx:' .. kind .. ':account:' .. account,
          'idx:' .. kind .. ':server:' .. server_id}
end

local function idx_add(kind, id, account, server_id, status)
  if kind == 'snapshots' then snap_listing_changed(account) end
  for _, k in ipairs(idx_bases(kind, account, server_id)) do
    redis.call('ZADD', k, id, id)
    redis.call('ZADD', k .. ':status:' .. status, id, id)
  end
end

local function idx_remove(kind, id, account, server_id, status)
  if kind == 'snapshots' then snap_listing_changed(account) end
  for _, k in ipairs(idx_bases(kind, account, server_id)) do
    redis.call('ZREM', k, id)
    redis.call('ZREM', k .. ':status:' .. status, id)
  end
end

local function idx_move(kind, id, account, server_id, old, new)
  if old == new then return end
  if kind == 'snapshots' then snap_listing_changed(account) end
  for _, k in ipairs(idx_bases(kind, account, server_id)) do
    redis.call('ZREM', k .. ':status:' .. old, id)
    redis.call('ZADD', k .. ':status:' .. new, id, id)
  end
end

local function op_active(status)
  return status == 'queued' or status == 'running'
end

-- Moves an operation to a new status (indexes follow). Finishing statuses stamp finished_at.
local function op_set_status(op, new, t)
  idx_move('operations', op.id, op.account, op.server_id, op.status, new)
  redis.call('HSET', 'operation:' .. op.id, 'status', new)
  if not op_active(new) then
    redis.call('HSET', 'operation:' .. op.id, 'finished_at', t)
  end
  op.status = new
end

local function snap_set_status(snap, new)
  if snap.deleted ~= '1' then
    idx_move('snapshots', snap.id, snap.account, snap.server_id, snap.status, new)
  end
  snap_hset(snap.id, 'status', new)
  snap.status = new
end

-- The host a server's operations run on (see shared/hosts.py).
local function host_of(server)
  if empty(server.host) then return 'default' end
  return server.host
end

-- A new queued operation on `server`; it runs on the server's host, for good: its retries
-- and resends go to that host's queue, and only that host's workers may claim it.
local function new_operation(optype, server, snapshot_id, t, extra)
  local oid = redis.call('INCR', 'seq:operation')
  local key = 'operation:' .. oid
  redis.call('HSET', key, 'id', oid, 'type', optype, 'status', 'queued', 'progress', 0,
    'server_id', server.id, 'account', server.account, 'created_at', t, 'attempts', 0,
    'host', host_of(server))
  if snapshot_id ~= nil then redis.call('HSET', key, 'snapshot_id', snapshot_id) end
  for k, v in pairs(extra or {}) do redis.call('HSET', key, k, v) end
  idx_add('operations', oid, server.account, server.id, 'queued')
  return oid
end

-- Takes a snapshot out of every listing and the limit count, and marks it deleted.
local function snap_mark_deleted(snap, t)
  if snap.deleted ~= '1' then
    idx_remove('snapshots', snap.id, snap.account, snap.server_id, snap.status)
  end
  snap_hset(snap.id, 'deleted', 1, 'deleted_at', t)
  snap.deleted = '1'
end

-- Clears the server's active operation if it is this one.
local function server_release(server_id, op_id)
  local key = 'server:' .. server_id
  if redis.call('HGET', key, 'active_op') == tostring(op_id) then
    redis.call('HDEL', key, 'active_op')
  end
end

-- An operation ended while its job may still be between a pre hook and its post hook (a
-- delete cancelling its capture, the reaper's deadline): the server is freed, but held
-- (power_hold, see server_busy) for that job until it has run the post hook and ended the
-- hold (workers/jobs.py), or for the hook's timeout and a margin if the job is gone. Freed
-- outright, the next operation started at once and the post hook ("start the database",
-- "thaw the filesystem") ran in the middle of it, a restore replacing the state, say.
-- A stop_server capture's job that stopped the server (server_stopped, with the seconds its
-- start may take: start_hold_s) starts it again after that, also held: freed outright, the
-- next operation took the server first, the start was left to it, and it found the server
-- stopped and left it so. set_server_power by the job (held_by) ends the hold and clears
-- server_stopped; a job failing its operation itself has done both by then (power_settled).
local function hold_for_owed_work(op, settled)
  local f = redis.call('HMGET', 'operation:' .. op.id, 'hook_pending', 'server_stopped',
    'start_hold_s')
  local seconds = 0
  if f[1] == '1' then
    local timeout = 60
    local hooks = redis.call('HGET', 'server:' .. op.server_id, 'hooks')
    if hooks and hooks ~= '' then
      timeout = tonumber(cjson.decode(hooks).timeout) or timeout
    end
    seconds = timeout + 30
  end
  if not settled and op.type == 'snapshot.create' and f[2] == '1' and f[3] then
    seconds = seconds + tonumber(f[3])
  end
  if seconds > 0 then
    redis.call('SET', 'power_hold:' .. op.server_id, op.id, 'EX', seconds)
  end
end

-- A restore's job ends its operation after it has settled the server's power: the hold it
-- took for that (hold_server_power.lua) ends in the same script. Ended a moment later (the
-- job's set_server_power), a client that saw the restore succeed and at once asked for the
-- next operation was refused: "still being handed back".
local function end_own_power_hold(op)
  if redis.call('GET', 'power_hold:' .. op.server_id) == op.id then
    redis.call('DEL', 'power_hold:' .. op.server_id)
  end
end

local function error_json(code, message)
  return cjson.encode({code = code, message = message})
end


-- Snapshots that count toward the per-server limit (in progress or available).
local function snapshot_count(server_id)
  local base = 'idx:snapshots:server:' .. server_id .. ':status:'
  return redis.call('ZCARD', base .. 'in_progress') + redis.call('ZCARD', base .. 'available')
end

-- Why no operation may start on this server now: (code, message), or nil.
local function server_busy(srv)
  if srv.status == 'restoring' then
    return 'server_invalid_state', 'Server ' .. srv.id .. ' is being restored.'
  end
  if not empty(srv.active_op) then
    return 'server_invalid_state',
      'Server ' .. srv.id .. ' has another operation in progress (operation ' .. srv.active_op .. ').'
  end
  local held = redis.call('GET', 'power_hold:' .. srv.id)
  if held then
    return 'server_invalid_state', 'Server ' .. srv.id .. ' is still being handed back by ' ..
      'operation ' .. held .. ' (its power put back, or its post_snapshot hook run); ' ..
      'retry in a moment.'
  end
  return nil
end

-- Why a new snapshot of this server cannot start now: (code, message), or nil.
local function snapshot_refusal(srv, max)
  local code, message = server_busy(srv)
  if code ~= nil then return code, message end
  if snapshot_count(srv.id) >= tonumber(max) then
    return 'snapshot_limit_reached',
      'Server ' .. srv.id .. ' already has the maximum of ' .. max .. ' snapshots.'
  end
  return nil
end

-- A new in_progress snapshot of srv with id sid, made by operation oid; origin is
-- 'manual', 'schedule' or 'safety'; extra: more hash fields. Emits snapshot.created.
local function new_snapshot(srv, sid, oid, name, description, origin, t, extra)
  snap_hset(sid, 'id', sid, 'server_id', srv.id, 'server_name', srv.name,
    'account', srv.account, 'name', name, 'status', 'in_progress', 'progress', 0,
    'created_at', t, 'operation_id', oid, 'deleted', 0, 'origin', origin, 'protected', 0)
  if description ~= nil then snap_hset(sid, 'description', description) end
  for k, v in pairs(extra or {}) do snap_hset(sid, k, v) end
  idx_add('snapshots', sid, srv.account, srv.id, 'in_progress')
  emit('snapshot.created', srv.account, srv.id, sid, oid, t, {name = name, origin = origin})
end

-- Takes a snapshot away at once (listings, limit) and queues the delete operation that
-- reclaims its storage; emits snapshot.deleted with data. Returns the operation id.
-- anywhere (the caller's storage is shared, s3://): any host's worker may run it (host
-- '*', see shared/hosts.py); else it is the server's host's, like its other operations.
local function drop_snapshot(snap, t, data, anywhere)
  snap_mark_deleted(snap, t)
  local host = '*'
  if not anywhere then host = redis.call('HGET', 'server:' .. snap.server_id, 'host') end
  local srv = {id = snap.server_id, account = snap.account, host = host}
  local oid = new_operation('snapshot.delete', srv, snap.id, t, {})
  emit('snapshot.deleted', snap.account, snap.server_id, snap.id, oid, t, data or {})
  return oid
end

-- The sorted set of schedules by their next slot (score = epoch s, member = server id).
local SCHEDULES_DUE = 'schedules:due'

-- Restores reading a snapshot: a set of operation ids (several clones may read one
-- snapshot at once); ``in_use_by`` on the hash names the latest, for people reading it.
local function snap_add_reader(snap_id, oid)
  redis.call('SADD', 'snapshot:' .. snap_id .. ':readers', oid)
  snap_hset(snap_id, 'in_use_by', oid)
end

local function snap_remove_reader(snap_id, oid)
  local key = 'snapshot:' .. snap_id .. ':readers'
  redis.call('SREM', key, oid)
  local left = redis.call('SRANDMEMBER', key)
  if left then
    snap_hset(snap_id, 'in_use_by', left)
  else
    snap_hdel(snap_id, 'in_use_by')
  end
end

-- The id of a restore that is reading this snapshot now, or nil.
local function snap_active_reader(snap_id)
  for _, oid in ipairs(redis.call('SMEMBERS', 'snapshot:' .. snap_id .. ':readers')) do
    if op_active(redis.call('HGET', 'operation:' .. oid, 'status')) then return oid end
  end
  return nil
end

-- Whether a schedule's retention may delete this snapshot (of server_id) now: only the
-- schedule's own, unprotected, finished snapshots that no restore is reading.
local function retention_may_drop(snap, server_id)
  if snap.id == nil or snap.deleted == '1' or snap.server_id ~= tostring(server_id) then
    return false
  end
  if snap.origin ~= 'schedule' or snap.protected == '1' or snap.status == 'in_progress' then
    return false
  end
  return snap_active_reader(snap.id) == nil
end

-- Whether the worker process that holds op's lease is alive: a fresh beat (within
-- timeout_ms of Redis's clock) under either key. hb_key is Dramatiq's heartbeats (member:
-- the broker id), written with the worker's own clock; 'workers:heartbeats' (member:
-- host/broker id, shared/hosts.py) is written with Redis's. Dramatiq's alone made a live
-- worker whose clock is behind Redis's by more than the timeout look dead: its running
-- job was taken over and run twice at once. Its own clock ahead only delays a takeover.
local function owner_alive(op, hb_key, timeout_ms)
  local tm = redis.call('TIME')
  local ms = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
  local process = op.owner_process or ''
  local beats = {redis.call('ZSCORE', hb_key, process)}
  if not empty(op.owner_host) then
    beats[2] = redis.call('ZSCORE', 'workers:heartbeats', op.owner_host .. '/' .. process)
  end
  for _, beat in pairs(beats) do
    if beat and tonumber(beat) > ms - tonumber(timeout_ms) then return true end
  end
  return false
end
