-- Keep a tenant's lock a while longer, only if it is still ours (StateStore.renew_lock):
-- a lock that expired and was taken by another process is left to it.
--
-- KEYS[1]  the lock ({p}:lock:{ctx})
-- ARGV[1]  the token our StateStore.try_lock set as its value
-- ARGV[2]  how long it lives from now, in milliseconds
--
-- Returns 1 if the lock was ours and lives ARGV[2] ms more, 0 otherwise.

if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
