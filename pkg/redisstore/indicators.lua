-- Versioned add-if-newer of one bar of several indicator series at once
-- (one indicator update; see package redisstore), with upsert.lua's
-- semantics for each key, fenced by the writer's ownership epoch.
-- KEYS[1..n] the indicator series keys, then, when the write is fenced,
-- KEYS[n+1] the partition's fence key;
-- ARGV[1] bar start (score); ARGV[2] version; ARGV[3] retention (bars
-- kept); ARGV[4] the writer's epoch (0: not fenced); ARGV[4+i] the member
-- JSON of KEYS[i].
-- Returns how many keys were written, or -1 when the fence holds a newer
-- epoch than the writer's (a newer owner took the partition): nothing is
-- written then. A fenced write with a newer epoch than the fence raises
-- it, so the fence is the newest epoch seen.
local n = #ARGV - 4
local score = ARGV[1]
local version = tonumber(ARGV[2])
local keep = tonumber(ARGV[3])
local epoch = tonumber(ARGV[4])
if epoch and epoch > 0 then
  local fence = KEYS[n + 1]
  local newest = tonumber(redis.call('GET', fence) or '0') or 0
  if newest > epoch then
    return -1
  end
  if newest < epoch then
    redis.call('SET', fence, epoch)
  end
end
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
    if #current > 0 then
      -- A replaced bar leaves the set's size as it was: nothing to trim.
      redis.call('ZREMRANGEBYSCORE', key, score, score)
      redis.call('ZADD', key, score, ARGV[4 + i])
    else
      redis.call('ZADD', key, score, ARGV[4 + i])
      if keep and keep > 0 and redis.call('ZCARD', key) > keep then
        redis.call('ZREMRANGEBYRANK', key, 0, -keep - 1)
      end
    end
    written = written + 1
  end
end
return written
