-- Note a notification's time unless a newer one was applied
-- (StateStore.note_notification).
--
-- Notifications carry no id or time but their token's: apply one only if it is not
-- older than the newest applied.
--
-- KEYS[1]  the tenant's hash ({p}:tenant:{ctx})
-- ARGV[1]  the notification token's `iat` (a float), stored as `notified_at`
--
-- Returns 1 if applied (stored), 0 if a newer notification was applied before.

local stored = tonumber(redis.call('HGET', KEYS[1], 'notified_at') or '0')
if stored > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'notified_at', ARGV[1])
return 1
