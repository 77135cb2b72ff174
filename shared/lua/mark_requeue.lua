-- ARGV: op id, seconds, heartbeats key, heartbeat timeout (ms).
-- The reaper's compare-and-set before it sends an operation's message again: the operation
-- is queued, or running without a live owner, and nothing happened to it (created, claimed,
-- released or requeued) for `seconds`. Only one of several reapers wins each round.
local op = hgetall('operation:' .. ARGV[1])
if op.id == nil or not op_active(op.status) then return fail('conflict', 'not active') end
local t = now()
local last = math.max(tonumber(op.created_at or '0'), tonumber(op.claimed_at or '0'),
  tonumber(op.requeued_at or '0'))
-- Each resend of the same operation waits twice as long (up to 32x): an operation queued
-- behind hours of work gets a handful of spare messages, not one per interval.
local wait = tonumber(ARGV[2]) * math.pow(2, math.min(tonumber(op.requeues or '0'), 5))
if t - last < wait then return fail('conflict', 'too recent') end
if op.status == 'running' and not empty(op.owner) and owner_alive(op, ARGV[3], ARGV[4]) then
  return fail('conflict', 'owner alive')
end
redis.call('HSET', 'operation:' .. op.id, 'requeued_at', t)
redis.call('HINCRBY', 'operation:' .. op.id, 'requeues', 1)
emit('operation.requeued', op.account, op.server_id, op.snapshot_id, op.id, t,
  {status = op.status})
return ok({type = op.type, host = host_of(op)})
