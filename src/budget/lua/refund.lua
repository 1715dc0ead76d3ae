-- KEYS: 1 day window, 2 month window, 3 refunded ids
-- ARGV: 1 amount, 2 payment id, 3 ids ttl
-- Idempotent. A window without state is left alone: it is rebuilt from the journal minus
-- its corrections when next used.
if redis.call('HSETNX', KEYS[3], ARGV[2], '1') == 0 then return 'duplicate' end
redis.call('EXPIRE', KEYS[3], ARGV[3])
for i = 1, 2 do
  local spent = redis.call('HGET', KEYS[i], 'spent')
  if spent then redis.call('HSET', KEYS[i], 'spent', sub0(spent, ARGV[1])) end
end
return 'ok'
