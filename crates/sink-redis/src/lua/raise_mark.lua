-- pgfanout: raises this writer's entry (ARGV[1]) in the sink's written mark
-- (KEYS[1], see check_mark.lua) to ARGV[2] unless it already holds that
-- version or a newer one. Runs before the rows of every call that writes
-- versions, in the same transaction or round trip.
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held or held < ARGV[2] then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return false
