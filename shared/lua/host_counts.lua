-- Read-only, for GET /hosts/: how many servers and queued operations each host has.
-- One pass over the server index and the queued-operations index inside Redis (a few ms
-- for 10,000 servers), rather than one reply per record to the web process.
-- Answers {"ok": true, "servers": {host: n}, "queued": {host: n}}; an operation made
-- before hosts existed has no host field and is on the default host.
local function count(index, prefix, skip_missing)
  local out = {}
  for _, id in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    local h = redis.call('HGET', prefix .. id, 'host')
    if h == false and not skip_missing then h = 'default' end
    -- '*': any host's (a delete on s3://): waits for no host in particular.
    if h and h ~= '*' then out[h] = (out[h] or 0) + 1 end
  end
  return out
end
return ok({servers = count('idx:servers:all', 'server:', true),
  queued = count('idx:operations:all:status:queued', 'operation:', false)})
