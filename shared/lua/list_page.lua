-- ARGV: index key, hash key prefix, cursor (exclusive upper id, '' = from the newest), limit,
-- and optionally a listing version key and the version the caller kept a page under.
-- Returns {total, next cursor ('' on the last page), version, id1, rev1, id2, rev2, ...}:
-- the version ('' without a version key, or none stored yet), the page's ids and each
-- hash's `rev` ('' for a hash without one: every kind but snapshots, and snapshots written
-- before revs existed); a hash that is gone is left out. When the version is the caller's,
-- nothing listed changed since: {-1, '', version} and the caller answers the page it kept.
-- The records themselves come in a second, pipelined read of only those the caller has
-- not rendered at that rev (shared/async_store.py): an HGETALL inside Lua costs Redis
-- ~10 us, as its reply becomes a Lua table and back, where an HGET of one field costs
-- ~0.4 us.
local key, prefix, cursor, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local version_key, known = ARGV[5] or '', ARGV[6] or ''
local version = ''
if version_key ~= '' then version = redis.call('GET', version_key) or '' end
if version ~= '' and version == known then return {-1, '', version} end
local total = redis.call('ZCARD', key)
local max = '+inf'
if cursor ~= '' then max = '(' .. cursor end
-- Members and scores: a token's member is its digest, its score (the cursor) its id.
local found = redis.call('ZREVRANGEBYSCORE', key, max, '-inf', 'WITHSCORES', 'LIMIT', 0, limit + 1)
local out = {total, '', version}
local last = nil
for i = 1, #found, 2 do
  if (i + 1) / 2 > limit then
    if last ~= nil then out[2] = last end
  else
    local hkey = prefix .. found[i]
    local rev = redis.call('HGET', hkey, 'rev')
    if rev or redis.call('EXISTS', hkey) == 1 then
      out[#out + 1] = found[i]
      out[#out + 1] = rev or ''
      last = found[i + 1]
    end
  end
end
return out
