-- KEYS: 1 day window, 2 month window, 3 holds, 4 hold expiry zset, 5 committed ids
-- ARGV: 1 amount, 2 reservation id, 3 day key ttl, 4 month key ttl
-- Idempotent. Counts the amount even if the hold already expired (the payment happened).
if redis.call('HSETNX', KEYS[5], ARGV[2], '1') == 0 then return 'duplicate' end
redis.call('EXPIRE', KEYS[5], ARGV[4])
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then
  unhold(KEYS[1], ARGV[1])
  unhold(KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[2])
  redis.call('ZREM', KEYS[4], ARGV[2])
end
redis.call('HSET', KEYS[1], 'spent', add(field(KEYS[1], 'spent'), ARGV[1]))
redis.call('HSET', KEYS[2], 'spent', add(field(KEYS[2], 'spent'), ARGV[1]))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 'ok'
