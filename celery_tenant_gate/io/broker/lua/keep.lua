-- Record a webhook notification and queue its control task, both or neither
-- (RedisControlQueue.keep): the replay record is set unless it exists, and the
-- control task's message is pushed only when it is set now.
--
-- A script is not undone when one of its commands fails, so the push comes first:
-- if it fails (say the key holds no list), nothing was written.
--
-- KEYS[1]  the replay record
-- KEYS[2]  the control queue's list (priority 0)
-- ARGV[1]  this attempt's id (the record's value)
-- ARGV[2]  seconds to keep the record
-- ARGV[3]  the message, as kombu's Redis transport stores it
--
-- Returns 1 if queued now (or by this very attempt, run again by redis-py after its
-- answer was lost), 0 if recorded before and nothing was queued.

local recorded = redis.call('GET', KEYS[1])
if recorded then
    -- Equal: this very attempt, run again by redis-py after its answer was lost.
    if recorded == ARGV[1] then return 1 end
    return 0
end
redis.call('LPUSH', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
