-- KEYS: 1 day window, 2 month window, 3 holds, 4 hold expiry zset, 5 committed ids
-- ARGV: 1 amount, 2 reservation id, 3 day key ttl, 4 month key ttl
-- Idempotent. Counts the amount even if the hold already expired (the payment happened).
if redis.call('HSETNX', KEYS[5], ARGV[2], '1') == 0 then return 'duplicate' end
redis.call('EXPIRE', KEYS[5], ARGV[3])
local held = redis.call('HDEL', KEYS[3], ARGV[2]) == 1
if held then redis.call('ZREM', KEYS[4], ARGV[2]) end
for i = 1, 2 do
  local w = redis.call('HMGET', KEYS[i], 'spent', 'held')
  local spent = add(w[1] or '0', ARGV[1])
  if held and w[2] then
    redis.call('HSET', KEYS[i], 'spent', spent, 'held', sub0(w[2], ARGV[1]))
  else
    redis.call('HSET', KEYS[i], 'spent', spent)
  end
  redis.call('EXPIRE', KEYS[i], ARGV[i + 2])
end
return 'ok'
