-- ARGV[1]: JSON {sha, account, scope}
local a = cjson.decode(ARGV[1])
local t = now()
local id = redis.call('INCR', 'seq:token')
redis.call('HSET', 'token:' .. a.sha, 'id', id, 'account', a.account, 'scope', a.scope,
  'created_at', t)
redis.call('SET', 'token_id:' .. id, a.sha)
-- Listings (GET /tokens/): score = id, member = the digest, so a listing reads token:<sha>.
redis.call('ZADD', 'idx:tokens:all', id, a.sha)
redis.call('ZADD', 'idx:tokens:account:' .. a.account, id, a.sha)
return ok({token_id = id, created_at = t})
