-- KEYS: 1 day window, 2 month window, 3 holds, 4 hold expiry zset
-- ARGV: 1 amount, 2 reservation id
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then
  unhold(KEYS[1], ARGV[1])
  unhold(KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[2])
  redis.call('ZREM', KEYS[4], ARGV[2])
end
return 'ok'
