-- KEYS: 1 day window, 2 month window, 3 holds, 4 hold expiry zset
-- ARGV: 1 amount, 2 daily limit ('' = none), 3 monthly limit ('' = none), 4 reservation id,
--       5 expires at, 6 now, 7 day key ttl, 8 month key ttl, 9 day label, 10 month label, 11 prefix
-- Returns {'seed'} when a window must first be rebuilt from the journal,
-- {'deny', window, used} or {'ok', day spent, day held, month spent, month held}.
reclaim(KEYS[3], KEYS[4], ARGV[11], ARGV[6])
local d = redis.call('HMGET', KEYS[1], 'spent', 'held', 'seeded')
local m = redis.call('HMGET', KEYS[2], 'spent', 'held', 'seeded')
if not d[3] or not m[3] then
  return { 'seed' }
end
local amount = ARGV[1]
local dspent, dheld, mspent, mheld = d[1] or '0', d[2] or '0', m[1] or '0', m[2] or '0'
local dused, mused = add(dspent, dheld), add(mspent, mheld)
if ARGV[2] ~= '' and cmp(add(dused, amount), ARGV[2]) > 0 then return { 'deny', 'daily', dused } end
if ARGV[3] ~= '' and cmp(add(mused, amount), ARGV[3]) > 0 then return { 'deny', 'monthly', mused } end
dheld, mheld = add(dheld, amount), add(mheld, amount)
redis.call('HSET', KEYS[1], 'held', dheld)
redis.call('HSET', KEYS[2], 'held', mheld)
redis.call('HSET', KEYS[3], ARGV[4], amount .. ' ' .. ARGV[9] .. ' ' .. ARGV[10])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('EXPIRE', KEYS[2], ARGV[8])
redis.call('EXPIRE', KEYS[3], ARGV[8])
redis.call('EXPIRE', KEYS[4], ARGV[8])
return { 'ok', dspent, dheld, mspent, mheld }
