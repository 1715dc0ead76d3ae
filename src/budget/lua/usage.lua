-- KEYS: 1 day window, 2 month window, 3 holds, 4 hold expiry zset
-- ARGV: 1 now, 2 prefix
reclaim(KEYS[3], KEYS[4], ARGV[2], ARGV[1])
if redis.call('HEXISTS', KEYS[1], 'seeded') == 0 or redis.call('HEXISTS', KEYS[2], 'seeded') == 0 then
  return { 'seed' }
end
return { 'ok', field(KEYS[1], 'spent'), field(KEYS[1], 'held'), field(KEYS[2], 'spent'), field(KEYS[2], 'held') }
