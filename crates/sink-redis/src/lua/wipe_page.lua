-- pgfanout: one SCAN page of a wipe (`pgfanout rebuild --wipe`).
--
-- KEYS: the keys of the page (they match the table's key pattern).
-- ARGV[1]: name of the version field.
-- ARGV[2]: row format, 'h' (hash) or 'j' (JSON string).
-- ARGV[3]: version bound ('' = any version): only rows stored at a version
--          below it go, so a change the stream wrote meanwhile stays.
-- ARGV[4]: the table's index set ('' = none); removed keys leave it too.
--
-- A key goes only when pgfanout wrote it: it has the table's type and
-- carries the version field. Keys of another type, or without the field
-- (written by another application under the same prefix), stay.
-- Returns the number of keys removed.

local field, format, bound, index = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local removed = 0
for _, key in ipairs(KEYS) do
  local version = nil
  local kind = redis.call('TYPE', key).ok
  if format == 'h' and kind == 'hash' then
    version = redis.call('HGET', key, field)
  elseif format == 'j' and kind == 'string' then
    local ok, document = pcall(cjson.decode, redis.call('GET', key))
    if ok and type(document) == 'table' and type(document[field]) == 'string' then
      version = document[field]
    end
  end
  if version and (bound == '' or version < bound) then
    redis.call('UNLINK', key)
    if index ~= '' then redis.call('SREM', index, key) end
    removed = removed + 1
  end
end
return removed
