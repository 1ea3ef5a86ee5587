-- pgfanout: run once per new connection, so that the sink's written mark
-- (KEYS[1], see check_mark.lua) holds few entries however often pgfanout
-- starts or reconnects: every entry becomes one, 'past', holding the
-- highest version of them all. A writer still running (another process)
-- re-adds its own entry with its next call; until then its versions count
-- as 'past', which every check includes.
local entries = redis.call('HGETALL', KEYS[1])
if #entries <= 2 then return false end
local highest = entries[2]
for i = 4, #entries, 2 do
  if entries[i] > highest then highest = entries[i] end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'past', highest)
return false
