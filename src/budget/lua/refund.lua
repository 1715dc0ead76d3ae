-- KEYS: 1 day window, 2 month window, 3 day refunds, 4 month refunds
-- ARGV: 1 amount, 2 payment id, 3 refunds ttl
-- Idempotent per window. A window not seeded from the journal yet is left alone: seeding
-- reads the journal minus its corrections (and marks them in its refunds).
for i = 1, 2 do
  if redis.call('HEXISTS', KEYS[i], 'seeded') == 1
    and redis.call('HSETNX', KEYS[i + 2], ARGV[2], '1') == 1 then
    redis.call('EXPIRE', KEYS[i + 2], ARGV[3])
    local spent = redis.call('HGET', KEYS[i], 'spent') or '0'
    redis.call('HSET', KEYS[i], 'spent', sub0(spent, ARGV[1]))
  end
end
return 'ok'
