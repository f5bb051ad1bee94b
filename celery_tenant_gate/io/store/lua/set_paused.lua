-- Pause or resume a tenant (StateStore.set_paused): set its paused fields, bump its
-- `version`, add it to or take it out of the paused index, and publish its ctx on
-- the changes channel.
--
-- A pause by hand ('manual') lasts until a resume by hand: another pause, by
-- anything else, is refused while it stands. A pause ends a resume under way (its
-- `resuming` stamp is cleared); an unpause given ARGV[7] is refused unless that stamp
-- is still the one stored (the resume was overtaken by a pause or a newer resume).
--
-- KEYS[1]  the tenant's hash ({p}:tenant:{ctx})
-- KEYS[2]  the paused tenants, a zset scored by when paused ({p}:paused)
-- ARGV[1]  '1' to pause, '0' to resume
-- ARGV[2]  the reason (`pause_reason`)
-- ARGV[3]  when (a float: `paused_at`, and the score in KEYS[2])
-- ARGV[4]  the changes channel ({p}:changes)
-- ARGV[5]  the tenant's ctx (the member of KEYS[2], and what is published)
-- ARGV[6]  who: 'manual' (by hand), 'gate' or 'webhook' (`paused_by`)
-- ARGV[7]  optional: the `resuming` stamp an unpause requires
--
-- Returns 1 when the paused flag changed, 0 when it did not (or the pause was
-- refused), -1 when the unpause was refused for its stamp.

local was = redis.call('HGET', KEYS[1], 'paused') == '1'
local now = ARGV[1] == '1'
if was and now and redis.call('HGET', KEYS[1], 'paused_by') == 'manual' and ARGV[6] ~= 'manual' then
    -- A pause by hand lasts until a resume by hand: another pause does not turn it
    -- into one that ends by itself.
    return 0
end
if not now and ARGV[7] and redis.call('HGET', KEYS[1], 'resuming') ~= ARGV[7] then
    return -1
end
if now then redis.call('HSET', KEYS[1], 'resuming', '0') end
redis.call('HSET', KEYS[1], 'paused', ARGV[1], 'pause_reason', ARGV[2], 'paused_at', ARGV[3],
           'paused_by', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'version', 1)
if now then
    redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
else
    redis.call('ZREM', KEYS[2], ARGV[5])
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
if was == now then return 0 end
return 1
