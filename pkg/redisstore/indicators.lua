-- Versioned add-if-newer of one bar of several indicator series at once
-- (one indicator update; see package redisstore), with upsert.lua's
-- semantics for each key.
-- KEYS[1..n] the indicator series keys;
-- ARGV[1] bar start (score); ARGV[2] version; ARGV[3] retention (bars
-- kept); ARGV[3+i] the member JSON of KEYS[i].
-- Returns how many keys were written.
--
-- Ownership fence (not used yet): append the fence key as KEYS[n+1] and
-- the writer's epoch as ARGV[4+n], take n = #KEYS - 1 below, and return -1
-- before the loop when GET of the fence key is a higher epoch, so that a
-- stale owner writes nothing.
local n = #KEYS
local score = ARGV[1]
local version = tonumber(ARGV[2])
local keep = tonumber(ARGV[3])
local written = 0
for i = 1, n do
  local key = KEYS[i]
  local current = redis.call('ZRANGEBYSCORE', key, score, score)
  local newer = false
  for _, m in ipairs(current) do
    -- Members are redisstore.IndicatorPoint JSON, whose first "version"
    -- is the point's; anything else is decoded in full.
    local stored = tonumber(string.match(m, '^{"start":%-?%d+,"version":(%-?%d+),'))
    if not stored then
      local ok, doc = pcall(cjson.decode, m)
      stored = ok and type(doc) == 'table' and tonumber(doc['version'])
    end
    if stored and stored >= version then
      newer = true
      break
    end
  end
  if not newer then
    for _, m in ipairs(current) do
      redis.call('ZREM', key, m)
    end
    redis.call('ZADD', key, score, ARGV[3 + i])
    if keep and keep > 0 then
      redis.call('ZREMRANGEBYRANK', key, 0, -keep - 1)
    end
    written = written + 1
  end
end
return written
