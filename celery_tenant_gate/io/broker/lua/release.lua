-- Release a tenant's held messages (RedisHeldQueues.release): move every message of
-- the tenant queue, each of its priority lists, to the consuming end of the queue it
-- was meant for, as stored (nothing is re-encoded).
--
-- Newest first, so that they come out oldest first and before anything published
-- since: the tenant's work runs in the order it was published. Atomic: no worker
-- sees half a release. The destination is read from the tenant_gate_route header,
-- through kombu's binding table (_kombu.binding.{exchange}) for a named exchange;
-- a message without a usable route goes to the default queue.
--
-- KEYS     none (the lists are named by ARGV, and found through kombu's bindings)
-- ARGV[1]  the tenant queue (its list; priority lists are ARGV[1] .. sep .. 3, 6, 9)
-- ARGV[2]  kombu's separator ('\x06\x16')
-- ARGV[3]  the default queue, for messages without a usable route
-- ARGV[4]  '1': also tell who moved (for task_released); '0': only how many
--
-- Returns the number of messages moved when ARGV[4] is '0'; when it is '1',
-- {moved, ids, task names, queues}: the last three are strings, one item per
-- message moved in the order they will run, joined by RS (ASCII 30).

local src, sep, fallback, tell = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local cache = {}
-- Only when asked (someone listens for task_released): who moved, in the order they
-- will run, as three strings (ids, task names, queues) joined by RS: cheap to build
-- and to read.
local ids, names, dests, at, RS = {}, {}, {}, 0, string.char(30)
local function text(value) if type(value) == 'string' then return value end return '' end
local function dest_for(raw)
    local ok, msg = pcall(cjson.decode, raw)
    if not ok or type(msg) ~= 'table' or type(msg.headers) ~= 'table' then return fallback end
    if tell then ids[at], names[at] = text(msg.headers.id), text(msg.headers.task) end
    local route = msg.headers.tenant_gate_route
    if type(route) ~= 'table' then return fallback end
    local ex, rk = route.exchange, route.routing_key
    if type(ex) ~= 'string' or type(rk) ~= 'string' or rk == '' then return fallback end
    if ex == '' then return rk end
    local key = ex .. sep .. rk
    if cache[key] == nil then
        local dest = rk
        for _, member in ipairs(redis.call('SMEMBERS', '_kombu.binding.' .. ex)) do
            local i = string.find(member, sep, 1, true)
            if i and string.sub(member, 1, i - 1) == rk then
                local rest = string.sub(member, i + #sep)
                local j = string.find(rest, sep, 1, true)
                dest = j and string.sub(rest, j + #sep) or rest
                break
            end
        end
        cache[key] = dest
    end
    return cache[key]
end
local moved = 0
for _, step in ipairs({'', '3', '6', '9'}) do
    local key = src
    if step ~= '' then key = src .. sep .. step end
    if tell then at = moved + redis.call('LLEN', key) + 1 end  -- popped newest first
    while true do
        local raw = redis.call('LPOP', key)
        if not raw then break end
        at = at - 1
        local dest = dest_for(raw)
        if tell then ids[at], names[at], dests[at] = ids[at] or '', names[at] or '', dest end
        if step ~= '' then dest = dest .. sep .. step end
        redis.call('RPUSH', dest, raw)
        moved = moved + 1
    end
end
if tell then
    local function column(t) return table.concat(t, RS, 1, moved) end
    return {moved, column(ids), column(names), column(dests)}
end
return moved
