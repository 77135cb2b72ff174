-- ARGV[1]: token id
local sha = redis.call('GET', 'token_id:' .. ARGV[1])
if not sha then return fail('not_found', 'Token ' .. ARGV[1] .. ' not found.') end
local account = redis.call('HGET', 'token:' .. sha, 'account')
redis.call('DEL', 'token:' .. sha, 'token_id:' .. ARGV[1])
redis.call('ZREM', 'idx:tokens:all', sha)
if account then redis.call('ZREM', 'idx:tokens:account:' .. account, sha) end
-- Internal event: every web process's event reader drops the token from its cache and
-- ends the token's streams (README "The event stream").
emit('token.revoked', account or '', nil, nil, nil, now(), {sha = sha})
return ok({sha = sha})
