-- Write back a pause the store lost (StoreEpoch.restore), unless a decision taken
-- since the loss stands: a resume (paused = '0'), or a pause that a lost 'manual'
-- one would not override.
--
-- KEYS[1]  the tenant's hash ({p}:tenant:{ctx})
-- KEYS[2]  the paused tenants ({p}:paused)
-- ARGV[1]  when it was paused (a float: `paused_at`, the score in KEYS[2])
-- ARGV[2]  the reason (`pause_reason`)
-- ARGV[3]  who paused it: 'manual', 'gate' or 'webhook' (`paused_by`)
-- ARGV[4]  the changes channel ({p}:changes)
-- ARGV[5]  the tenant's ctx (the member of KEYS[2], and what is published)
--
-- Returns 1 when the pause was written back, 0 when it was left as it is.

local paused = redis.call('HGET', KEYS[1], 'paused')
if paused == '0' then return 0 end
if paused == '1' and (ARGV[3] ~= 'manual' or redis.call('HGET', KEYS[1], 'paused_by') == 'manual') then
    return 0
end
redis.call('HSET', KEYS[1], 'paused', '1', 'pause_reason', ARGV[2], 'paused_at', ARGV[1],
           'paused_by', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[5])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
