-- ARGV: server id, operation id. Ends that operation's power hold (hold_server_power.lua),
-- if it still has it; the server's status is left as it is (set_server_power says it).
if redis.call('GET', 'power_hold:' .. ARGV[1]) == ARGV[2] then
  redis.call('DEL', 'power_hold:' .. ARGV[1])
end
return ok()
