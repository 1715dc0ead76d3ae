-- KEYS: 1 day window, 2 month window
-- ARGV: 1 day total from the journal, 2 month total, 3 day key ttl, 4 month key ttl
-- A window that lost its state (new window, Redis restarted or flushed) takes the journal's
-- total as its spent amount. Commits that landed meanwhile are in the journal already (the
-- journal is written first), so overwriting does not lose them.
for i = 1, 2 do
  if redis.call('HEXISTS', KEYS[i], 'seeded') == 0 then
    redis.call('HSET', KEYS[i], 'spent', ARGV[i], 'seeded', '1')
    redis.call('EXPIRE', KEYS[i], ARGV[i + 2])
  end
end
return 'ok'
