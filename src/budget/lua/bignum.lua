-- Non-negative decimal integers of any size as strings (Lua numbers are doubles; amounts in
-- base units of 18-decimal tokens do not fit). Arithmetic on base-10^7 limbs.
local BASE, WIDTH = 10000000, 7

local function norm(a)
  a = string.gsub(a or '0', '^0+', '')
  if a == '' then return '0' end
  return a
end

local function cmp(a, b)
  a, b = norm(a), norm(b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  if a == b then return 0 end
  return a < b and -1 or 1
end

local function limbs(a)
  a = norm(a)
  local t, n = {}, #a
  while n > 0 do
    local s = math.max(1, n - WIDTH + 1)
    t[#t + 1] = tonumber(string.sub(a, s, n))
    n = s - 1
  end
  return t
end

local function unlimbs(t)
  local i = #t
  while i > 1 and t[i] == 0 do i = i - 1 end
  if i == 0 then return '0' end
  local parts = { string.format('%d', t[i]) }
  for j = i - 1, 1, -1 do parts[#parts + 1] = string.format('%07d', t[j]) end
  return table.concat(parts)
end

-- Both below 10^15: doubles are exact (sums stay far below 2^53), no limbs needed.
local function small(a, b)
  return #a <= 15 and #b <= 15
end

local function add(a, b)
  a, b = norm(a), norm(b)
  if small(a, b) then return string.format('%.0f', tonumber(a) + tonumber(b)) end
  local x, y, r, carry = limbs(a), limbs(b), {}, 0
  for i = 1, math.max(#x, #y) do
    local s = (x[i] or 0) + (y[i] or 0) + carry
    if s >= BASE then r[i] = s - BASE; carry = 1 else r[i] = s; carry = 0 end
  end
  if carry > 0 then r[#r + 1] = carry end
  return unlimbs(r)
end

-- max(a - b, 0)
local function sub0(a, b)
  a, b = norm(a), norm(b)
  if cmp(a, b) <= 0 then return '0' end
  if small(a, b) then return string.format('%.0f', tonumber(a) - tonumber(b)) end
  local x, y, r, borrow = limbs(a), limbs(b), {}, 0
  for i = 1, #x do
    local s = x[i] - (y[i] or 0) - borrow
    if s < 0 then r[i] = s + BASE; borrow = 1 else r[i] = s; borrow = 0 end
  end
  return unlimbs(r)
end

local function field(key, name)
  return redis.call('HGET', key, name) or '0'
end

-- Removes a hold's amount from one window hash (if the window still exists).
local function unhold(key, amount)
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'held', sub0(field(key, 'held'), amount))
  end
end

-- Reclaims holds whose reservation expired (a crashed or stuck request). holds: id -> "amount day month".
local function reclaim(holds, expiry, prefix, now)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now)) do
    local h = redis.call('HGET', holds, id)
    if h then
      local amount, day, month = string.match(h, '^(%d+) (%S+) (%S+)$')
      if amount then
        unhold(prefix .. ':d:' .. day, amount)
        unhold(prefix .. ':m:' .. month, amount)
      end
      redis.call('HDEL', holds, id)
    end
    redis.call('ZREM', expiry, id)
  end
end
