-- ARGV[1]: JSON {key, claim, record?, ttl}
-- Ends a request's claim on an Idempotency-Key (api/idempotency.py), only while the key
-- holds that claim or nothing (a claim that lapsed and was taken is another request's):
-- with record, its answer, kept ttl seconds for retries to replay; without, the claim is
-- released so that a retry runs, unless the transition committed under it (idem_ok): a
-- retry answers from that record, since the operation exists.
local a = cjson.decode(ARGV[1])
local held = redis.call('GET', a.key)
local rec = nil
if held then rec = cjson.decode(held) end
if rec ~= nil and rec.claim ~= a.claim then return ok({settled = false}) end
if a.record ~= nil then
  redis.call('SET', a.key, a.record, 'EX', a.ttl)
elseif rec ~= nil and rec.state == 'pending' then
  redis.call('DEL', a.key)
end
return ok({settled = true})
