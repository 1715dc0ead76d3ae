-- KEYS: 1 day window, 2 month window
-- ARGV: 1 day total from the journal, 2 month total, 3 day key ttl, 4 month key ttl
-- A window that lost its state (new window, Redis restarted or flushed) is rebuilt from the
-- journal. Commits that reached the window before this (it has `spent` but no `seeded`) may or
-- may not be in the journal total read just before: they are added on top, so nothing is lost
-- (a payment may count twice until the window ends, which errs on the side of spending less).
for i = 1, 2 do
  if redis.call('HEXISTS', KEYS[i], 'seeded') == 0 then
    local since = redis.call('HGET', KEYS[i], 'spent') or '0'
    redis.call('HSET', KEYS[i], 'spent', add(ARGV[i], since), 'seeded', '1')
    redis.call('EXPIRE', KEYS[i], ARGV[i + 2])
  end
end
return 'ok'
