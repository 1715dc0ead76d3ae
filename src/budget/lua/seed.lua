-- KEYS: 1 day window, 2 month window, 3 day refunds, 4 month refunds
-- ARGV: 1 day total from the journal, 2 month total, 3 day key ttl, 4 month key ttl,
--       then pairs (payment id, '1' if its correction is in the day) of the corrections the
--       totals already subtract
-- A window that lost its state (new window, Redis restarted or flushed) is rebuilt from the
-- journal. Commits that reached the window before this (it has `spent` but no `seeded`) may or
-- may not be in the journal total read just before: they are added on top, so nothing is lost
-- (a payment may count twice until the window ends, which errs on the side of spending less).
-- The corrections counted in the totals are marked in the window's refunds: a refund of the
-- same payment later does not subtract it again.
for i = 1, 2 do
  if redis.call('HEXISTS', KEYS[i], 'seeded') == 0 then
    local since = redis.call('HGET', KEYS[i], 'spent') or '0'
    redis.call('HSET', KEYS[i], 'spent', add(ARGV[i], since), 'seeded', '1')
    redis.call('EXPIRE', KEYS[i], ARGV[i + 2])
    for j = 5, #ARGV, 2 do
      if i == 2 or ARGV[j + 1] == '1' then
        redis.call('HSET', KEYS[i + 2], ARGV[j], '1')
      end
    end
    if #ARGV > 4 then redis.call('EXPIRE', KEYS[i + 2], ARGV[i + 2]) end
  end
end
return 'ok'
