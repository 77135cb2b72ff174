-- ARGV[1]: token id
local sha = redis.call('GET', 'token_id:' .. ARGV[1])
if not sha then return fail('not_found', 'Token ' .. ARGV[1] .. ' not found.') end
redis.call('DEL', 'token:' .. sha, 'token_id:' .. ARGV[1])
return ok({sha = sha})
