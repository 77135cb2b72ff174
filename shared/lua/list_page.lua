-- ARGV: index key, hash key prefix, cursor (exclusive upper id, '' = from the newest), limit.
-- Returns {total, has_more, hash1 (flat), hash2, ...} in one round trip.
local key, prefix, cursor, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local total = redis.call('ZCARD', key)
local max = '+inf'
if cursor ~= '' then max = '(' .. cursor end
local ids = redis.call('ZREVRANGEBYSCORE', key, max, '-inf', 'LIMIT', 0, limit + 1)
local out = {total, 0}
for i, id in ipairs(ids) do
  if i > limit then
    out[2] = 1
  else
    out[#out + 1] = redis.call('HGETALL', prefix .. id)
  end
end
return out
