-- pgfanout: run before a call of plain commands (which check no versions),
-- between the caller's WATCH of the written mark and its MULTI.
--
-- KEYS[1]: the sink's written mark, a hash: writer (one per connection, or
--          'past' for writers folded together) -> the highest version it
--          wrote (the sortable text, whose byte order is the stream order).
-- ARGV[1]: this writer. ARGV[2]: the version of the call's first change.
--
-- When another writer's entry reaches ARGV[2], that writer may have stored
-- a row newer than a change of the call: the script then writes the mark,
-- so that the WATCH makes the caller's EXEC run nothing, and returns that
-- version (the caller applies the changes through the batch script). Else
-- it returns false and writes nothing.
local highest = false
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  if entries[i] ~= ARGV[1] and (not highest or entries[i + 1] > highest) then highest = entries[i + 1] end
end
if highest and highest >= ARGV[2] then
  redis.call('HSET', KEYS[1], 'past', highest)
  return highest
end
return false
