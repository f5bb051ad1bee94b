-- Release a tenant's look-up lock, only if it is still ours (StateStore.unlock): a
-- lock that expired and was taken by another process is left to it.
--
-- KEYS[1]  the lock ({p}:lock:{ctx})
-- ARGV[1]  the token our StateStore.try_lock set as its value
--
-- Returns 1 if the lock was ours and is deleted, 0 otherwise.

if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
