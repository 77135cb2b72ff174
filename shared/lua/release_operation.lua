-- ARGV: op id, owner. A job that stopped without finishing (interrupted by a shutdown, or
-- an error that will be retried) gives its lease back, so the retry can claim it at once
-- instead of waiting for this worker's heartbeat to go stale. The status stays running.
local key = 'operation:' .. ARGV[1]
if redis.call('HGET', key, 'owner') == ARGV[2] then
  redis.call('HDEL', key, 'owner', 'owner_process', 'owner_host', 'claim_id')
  redis.call('HSET', key, 'claimed_at', now())
  return ok({released = true})
end
return ok({released = false})
