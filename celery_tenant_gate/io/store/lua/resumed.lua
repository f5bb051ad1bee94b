-- End a resume (StateStore.end_resume): clear the tenant's `resuming` stamp if it is
-- still the one given, bump its `version` and announce it on the changes channel.
--
-- KEYS[1]  the tenant's hash ({p}:tenant:{ctx})
-- ARGV[1]  the stamp the resume wrote
-- ARGV[2]  the changes channel ({p}:changes)
-- ARGV[3]  the tenant's ctx (what is published)
--
-- Returns 1 if the stamp was ours and is cleared, 0 otherwise.

if redis.call('HGET', KEYS[1], 'resuming') ~= ARGV[1] then
    return 0
end
redis.call('HSET', KEYS[1], 'resuming', '0')
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
