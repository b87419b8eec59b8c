-- Versioned add-if-newer of one bar of a series (see package redisstore).
-- KEYS[1] series key; ARGV[1] bar start (score); ARGV[2] version;
-- ARGV[3] member JSON; ARGV[4] retention (bars kept).
local score = ARGV[1]
local version = tonumber(ARGV[2])
local current = redis.call('ZRANGEBYSCORE', KEYS[1], score, score)
for _, m in ipairs(current) do
  local ok, doc = pcall(cjson.decode, m)
  if ok and type(doc) == 'table' and tonumber(doc['version']) and tonumber(doc['version']) >= version then
    return 0
  end
end
for _, m in ipairs(current) do
  redis.call('ZREM', KEYS[1], m)
end
redis.call('ZADD', KEYS[1], score, ARGV[3])
local keep = tonumber(ARGV[4])
if keep and keep > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -keep - 1)
end
return 1
