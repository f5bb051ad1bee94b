-- Write fields of a tenant's record unless a newer observation is stored
-- (StateStore.write_state, write_failure, update_endpoint, set_fields).
--
-- Writes are ordered by `observed_at`: a write observed before the stored one is
-- refused, so a slow State API answer cannot undo a newer notification. An applied
-- write bumps `version` and publishes the tenant's ctx on the changes channel.
--
-- KEYS[1]   the tenant's hash ({p}:tenant:{ctx})
-- ARGV[1]   the guard: when this write was observed (a float; 1e300 always applies)
-- ARGV[2]   '1': store the guard as `observed_at`; '0': leave `observed_at` alone
-- ARGV[3]   the changes channel ({p}:changes)
-- ARGV[4]   the tenant's ctx (what is published)
-- ARGV[5..] field, value, field, value, ...
--
-- Returns the whole hash after the write (HGETALL's flat list of fields and values)
-- with, as its last item, 1 if the write was applied and 0 if it was refused.

local stored = tonumber(redis.call('HGET', KEYS[1], 'observed_at') or '0')
local applied = 0
if stored <= tonumber(ARGV[1]) then
    if ARGV[2] == '1' then
        redis.call('HSET', KEYS[1], 'observed_at', ARGV[1])
    end
    redis.call('HSET', KEYS[1], unpack(ARGV, 5))
    redis.call('HINCRBY', KEYS[1], 'version', 1)
    redis.call('PUBLISH', ARGV[3], ARGV[4])
    applied = 1
end
local all = redis.call('HGETALL', KEYS[1])
table.insert(all, applied)
return all
