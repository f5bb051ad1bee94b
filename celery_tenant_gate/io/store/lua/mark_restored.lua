-- Mark the store's epoch restored (StoreEpoch.mark_restored): the data it lost was
-- written back. Creates the epoch (ARGV[1]) if the store has none.
--
-- KEYS[1]  the epoch ({p}:epoch): "<id>" or "<id> restored"
-- ARGV[1]  the id to create when KEYS[1] is missing
--
-- Returns the epoch's new value.

local value = redis.call('GET', KEYS[1])
local id = ARGV[1]
if value then id = string.match(value, '^(%S+)') end
value = id .. ' restored'
redis.call('SET', KEYS[1], value)
return value
