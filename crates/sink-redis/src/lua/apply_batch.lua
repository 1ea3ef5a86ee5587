-- pgfanout: applies one batch of row changes and its checkpoint, atomically
-- with respect to other clients, in one call.
--
-- KEYS: every key the batch touches; KEYS[1] is the checkpoint key.
-- ARGV[1]: name of the version field ('' = no version guard).
-- ARGV[2]: checkpoint LSN to store after the batch ('' = none).
-- ARGV[3..]: records, each an opcode then its arguments; a key argument is
-- an index into KEYS, 0 meaning "none". Versions are fixed-width strings
-- whose byte order is the stream order, so `<` compares them.
--   H record field*
--       hash row write; record is one argument, MessagePack values one
--       after the other: key, tomb, index (positions in KEYS, 0 = none),
--       replace (1 replaces the row, 0 patches it), ttl, nunset (integers),
--       version, then field name, value, field name, value, ... (strings;
--       the script writes the version field first when guarded, from the
--       version it already holds); the nunset fields to remove
--       follow as arguments. cmsgpack unpacks the record straight into
--       write_hash's parameters and the fields into HSET's arguments: two
--       arguments per row instead of two per column and one per scalar
--       (a Redis server spends much of a call's time taking its arguments
--       in), and no number parsed from text
--   J key tomb index version ttl json ntoast column*
--       JSON row write; columns listed keep their stored value (TOAST)
--   M format old new oldtomb index version tombttl
--       key change: the old row moves to the new key, then an H/J follows
--   D format key tomb index version tombttl
--       row delete, leaving a tombstone when tomb is given
--   T format index version
--       truncate: every row tracked in the index set
--   I key          delete a dependent key (cache invalidation)
--   S set          delete the members of a set, then the set
--   X stream maxlen id nfields (field value)*
--       event; id is the change's version (<commit lsn>-<ordinal>): an id
--       the stream already passed is a re-delivery and adds nothing
-- Index set additions (H, J) wait and go as one SADD per run of records
-- naming the same set; any other record first adds what waits, so the set
-- sees its additions and removals in record order. An error stops the
-- records but what waits is still added (rows written before the error
-- stay written, and a retry skips them by version).
-- Returns {written, skipped}: skipped counts row writes refused because the
-- store already held the row at the same or a newer version (a replay).

local version_field = ARGV[1]

-- Over maxmemory, Redis refuses a script's first write only when that
-- command may grow memory: a DEL passes, and then every write after it. A
-- SETRANGE of nothing (changes nothing, but counts as such a write) first
-- makes a full server refuse the whole call before anything is written,
-- so the sink blocks on a full store instead of writing past its limit.
redis.call('SETRANGE', KEYS[1], 0, '')
local written, skipped = 0, 0

-- The key whose index into KEYS is ARGV[i], or nil for index 0.
local function key_at(i)
  local index = ARGV[i]
  if index == '0' then return nil end
  return KEYS[tonumber(index)]
end

-- The count at ARGV[i]; '0', the usual one, without parsing a number
-- (tonumber is strtod, a good part of a row's cost in the script).
local function count_at(i)
  local text = ARGV[i]
  if text == '0' then return 0 end
  return tonumber(text)
end

-- The version stored with a row, or nil (no row, no guard, or a row
-- written without one).
local function stored_version(key, format)
  if format == 'h' then
    local version = redis.call('HGET', key, version_field)
    if version then return version end
    return nil
  end
  local text = redis.call('GET', key)
  if not text then return nil end
  local ok, document = pcall(cjson.decode, text)
  if ok and type(document) == 'table' and type(document[version_field]) == 'string' then
    return document[version_field]
  end
  return nil
end

-- Whether the row's tombstone, if it has one, lets a change at `version`
-- write: true unless the tombstone holds that version or a newer one.
local function tomb_allows(tomb, version)
  if not tomb then return true end
  local buried = redis.call('GET', tomb)
  return not (buried and buried >= version)
end

-- Whether a change at `version` may touch the row at `key`: true unless the
-- row (or its tombstone) already holds that version or a newer one.
local function may_write(key, tomb, format, version)
  if version_field == '' then return true end
  local current = stored_version(key, format)
  if current and current >= version then return false end
  return tomb_allows(tomb, version)
end

local function count(allowed)
  if allowed then written = written + 1 else skipped = skipped + 1 end
  return allowed
end

local waiting_set, waiting, waiting_count = nil, {}, 0

-- Adds the keys waiting for the index set, 1000 per SADD.
local function add_waiting_to_index()
  for i = 1, waiting_count, 1000 do
    redis.call('SADD', waiting_set, unpack(waiting, i, math.min(i + 999, waiting_count)))
  end
  waiting, waiting_count = {}, 0
end

local function add_to_index(index, key)
  if index ~= waiting_set then
    if waiting_count > 0 then add_waiting_to_index() end
    waiting_set = index
  end
  waiting_count = waiting_count + 1
  waiting[waiting_count] = key
end

-- The H record whose fields to remove start at ARGV[unset_from], its
-- MessagePack values unpacked into the parameters (KEYS[0] is nil: no
-- tombstone, no index set); returns where the next record starts.
local function write_hash(unset_from, key_position, tomb_position, index_position, replace, ttl, unset_count, version, ...)
  local key, tomb, index = KEYS[key_position], KEYS[tomb_position], KEYS[index_position]
  local next_record = unset_from + unset_count
  -- A guarded row replacing a key that does not exist (an insert, the
  -- usual case) has no stored version to compare and nothing to delete:
  -- one EXISTS instead of the guard's HGET and the DEL.
  local fresh = replace == 1 and version_field ~= '' and redis.call('EXISTS', key) == 0
  local allowed
  if fresh then allowed = tomb_allows(tomb, version) else allowed = may_write(key, tomb, 'h', version) end
  if count(allowed) then
    if replace == 1 and not fresh then redis.call('DEL', key) end
    local first_field = ...
    if version_field ~= '' then
      -- The version first: the record carries it once, not as a field too.
      redis.call('HSET', key, version_field, version, ...)
    elseif first_field then
      redis.call('HSET', key, ...)
    end
    if unset_count > 0 then redis.call('HDEL', key, unpack(ARGV, unset_from, next_record - 1)) end
    if ttl > 0 then redis.call('EXPIRE', key, ttl) end
    if index then add_to_index(index, key) end
    if tomb then redis.call('DEL', tomb) end
  end
  return next_record
end

-- Applies the records in order; returns an error reply, or nothing.
-- Records are read in place: field lists go to Redis as ranges of ARGV
-- (unpack) or straight out of cmsgpack, never copied into Lua tables.
local function apply_records()
  local p = 3
  local last = #ARGV
  while p <= last do
    local op = ARGV[p]
    if waiting_count > 0 and op ~= 'H' and op ~= 'J' then add_waiting_to_index() end
    if op == 'H' then
      p = write_hash(p + 2, cmsgpack.unpack(ARGV[p + 1]))
    elseif op == 'J' then
      local key, tomb, index = key_at(p + 1), key_at(p + 2), key_at(p + 3)
      local version, ttl, json = ARGV[p + 4], count_at(p + 5), ARGV[p + 6]
      local kept_count = count_at(p + 7)
      local kept_from = p + 8
      p = kept_from + kept_count
      if count(may_write(key, tomb, 'j', version)) then
        if kept_count > 0 then
          -- Unchanged TOAST columns keep what the stored row holds.
          local ok, stored = pcall(cjson.decode, redis.call('GET', key) or '')
          local document = cjson.decode(json)
          if ok and type(stored) == 'table' then
            for i = kept_from, p - 1 do document[ARGV[i]] = stored[ARGV[i]] end
          end
          json = cjson.encode(document)
        end
        redis.call('SET', key, json)
        if ttl > 0 then redis.call('EXPIRE', key, ttl) end
        if index then add_to_index(index, key) end
        if tomb then redis.call('DEL', tomb) end
      end
    elseif op == 'M' then
      local format, old, new, old_tomb, index = ARGV[p + 1], key_at(p + 2), key_at(p + 3), key_at(p + 4), key_at(p + 5)
      local version, tomb_ttl = ARGV[p + 6], tonumber(ARGV[p + 7])
      p = p + 8
      -- A newer change already rewrote the old key (another row took it):
      -- leave it; the write that follows is guarded on its own.
      if may_write(old, nil, format, version) then
        if may_write(new, nil, format, version) and redis.call('EXISTS', old) == 1 then
          redis.call('COPY', old, new, 'REPLACE')
        end
        redis.call('DEL', old)
        if index then redis.call('SREM', index, old) end
        if old_tomb then redis.call('SET', old_tomb, version, 'EX', tomb_ttl) end
      end
    elseif op == 'D' then
      local format, key, tomb, index = ARGV[p + 1], key_at(p + 2), key_at(p + 3), key_at(p + 4)
      local version, tomb_ttl = ARGV[p + 5], tonumber(ARGV[p + 6])
      p = p + 7
      if count(may_write(key, tomb, format, version)) then
        redis.call('DEL', key)
        if index then redis.call('SREM', index, key) end
        if tomb then redis.call('SET', tomb, version, 'EX', tomb_ttl) end
      end
    elseif op == 'T' then
      local format, index, version = ARGV[p + 1], key_at(p + 2), ARGV[p + 3]
      p = p + 4
      for _, member in ipairs(redis.call('SMEMBERS', index)) do
        if count(may_write(member, nil, format, version)) then
          redis.call('DEL', member)
          redis.call('SREM', index, member)
        end
      end
    elseif op == 'I' then
      redis.call('DEL', key_at(p + 1))
      p = p + 2
    elseif op == 'S' then
      local set = key_at(p + 1)
      p = p + 2
      local members = redis.call('SMEMBERS', set)
      for i = 1, #members, 500 do
        redis.call('DEL', unpack(members, i, math.min(i + 499, #members)))
      end
      redis.call('DEL', set)
    elseif op == 'X' then
      local stream, max_len, id = key_at(p + 1), ARGV[p + 2], ARGV[p + 3]
      local fields_from = p + 5
      p = fields_from + tonumber(ARGV[p + 4]) * 2
      local added = redis.pcall('XADD', stream, 'MAXLEN', '~', max_len, id, unpack(ARGV, fields_from, p - 1))
      if type(added) == 'table' and added.err and not string.find(added.err, 'equal or smaller', 1, true) then
        return redis.error_reply(added.err)
      end
    else
      return redis.error_reply('pgfanout batch script: unknown record ' .. tostring(op) .. ' at argument ' .. p)
    end
  end
end

local ok, outcome = pcall(apply_records)
if waiting_count > 0 then add_waiting_to_index() end
if not ok then
  -- The failure as its reply, error code first (WRONGTYPE, OOM, ...; ERR
  -- for an error of the script itself), as if it had not been caught.
  local message = type(outcome) == 'table' and tostring(outcome.err) or tostring(outcome)
  if not string.find(message, '^[A-Z][A-Z_]* ') then message = 'ERR ' .. message end
  return redis.error_reply(message)
end
if outcome then return outcome end

if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[2]) end
return {written, skipped}
