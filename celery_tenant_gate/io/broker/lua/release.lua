-- Release one chunk of a tenant's held messages (RedisHeldQueues.release runs it until
-- what the tenant queue held when the release began is moved). A run reads at most
-- ARGV[6] messages, and stops reading once it has about ARGV[7] bytes, from the oldest
-- end of the tenant queue's lists (each list at most its budget, ARGV[10..13]), and
-- moves each one, as stored, to the queue its tenant_gate_route header names: every
-- loop is bounded by what the run read first, so a run takes milliseconds.
--
-- Mode 'head': the whole release in this one run, to the consuming end of their
-- queues, newest first, so that they come out oldest first and before anything
-- queued. Refused (answer[1] = 1, nothing moved) when it does not fit in one run, or
-- while an earlier 'tail' release of this queue is unfinished (its mark exists).
-- Mode 'tail': oldest first to the publishing end, behind what is queued; chunk
-- after chunk, workers meet the held messages in publish order. Sets the mark
-- (ARGV[1] .. sep .. 'unfinished'), which the caller deletes when it is done.
--
-- A route is read as untrusted input. No header: the default queue. A message that
-- is not a kombu envelope, a route that is not an object of two strings, an absurd
-- name (empty, longer than ARGV[9], with control characters such as kombu's priority
-- separator), or a route that leads to the tenant queue itself, to any tenant queue
-- (a name matching ARGV[8]) or to a key that is not a list: that message is not moved
-- but pushed to the rejects list (ARGV[1] .. sep .. 'rejected'), oldest at the right,
-- as '<bytes of reason>:<reason><message>', for the caller to dead-letter.
--
-- Nothing is lost if a command fails: every destination is checked before the first
-- push, and the messages leave the tenant queue (LTRIM) only after every push.
--
-- KEYS      none (the lists are named by ARGV, and found through kombu's bindings)
-- ARGV[1]   the tenant queue (its list; priority lists are ARGV[1] .. sep .. 3, 6, 9)
-- ARGV[2]   kombu's separator ('\x06\x16')
-- ARGV[3]   the default queue, for messages without a route header
-- ARGV[4]   '1': also tell who moved (for task_released); '0': only how many
-- ARGV[5]   'head' or 'tail'
-- ARGV[6]   most messages to read in this run
-- ARGV[7]   bytes after which the run reads no more (it always takes one message)
-- ARGV[8]   Lua pattern of a tenant queue's name ('' : only ARGV[1] is refused)
-- ARGV[9]   longest exchange, routing key or queue name accepted
-- ARGV[10..13]  how many may still be taken from each list ('', 3, 6, 9)
--
-- Returns {refused, taken from each of the 4 lists, moved, rejected, ids, names,
-- queues}: the last three are '' unless ARGV[4] is '1'; then one item per message
-- moved, in the order they will run, joined by RS (ASCII 30).

local src, sep, fallback, tell, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1', ARGV[5]
local max_count, max_bytes = tonumber(ARGV[6]), tonumber(ARGV[7])
local tenant_pattern, longest = ARGV[8], tonumber(ARGV[9])
local steps = {'', '3', '6', '9'}
local mark, rejects = src .. sep .. 'unfinished', src .. sep .. 'rejected'

local function list_of(base, step)
    if step == '' then return base end
    return base .. sep .. step
end

-- Read: up to `want` of the oldest messages of a list, oldest first. LINDEX from the
-- tail costs what it reads; LRANGE walks a long list from its head (Redis 7.0).
local bytes, read, refused = 0, {}, false
local function take(key, want)
    local items = {}
    while #items < want and bytes < max_bytes do
        local raw = redis.call('LINDEX', key, -(#items + 1))
        if not raw then break end
        items[#items + 1] = raw
        bytes = bytes + #raw
    end
    return items
end
local wanted, left = {}, max_count
for i, step in ipairs(steps) do
    local budget = tonumber(ARGV[9 + i])
    wanted[i] = 0
    if budget > 0 then
        wanted[i] = math.min(budget, redis.call('LLEN', list_of(src, step)))
    end
end
if mode == 'head' then
    local total = wanted[1] + wanted[2] + wanted[3] + wanted[4]
    refused = total > max_count or redis.call('EXISTS', mark) == 1
end
for i, step in ipairs(steps) do
    read[i] = {}
    if not refused and left > 0 and bytes < max_bytes and wanted[i] > 0 then
        read[i] = take(list_of(src, step), math.min(wanted[i], left))
        left = left - #read[i]
    end
    if mode == 'head' and #read[i] < wanted[i] then refused = true end
end
if refused then return {1, 0, 0, 0, 0, 0, 0, '', '', ''} end

-- Resolve: where each message goes, or why it does not.
local routes, kinds = {}, {}
local function bound_queue(ex, rk)
    local members = redis.pcall('SMEMBERS', '_kombu.binding.' .. ex)
    if type(members) ~= 'table' or members.err then
        return nil, 'the bindings of exchange ' .. ex .. ' cannot be read'
    end
    for _, member in ipairs(members) do
        local i = string.find(member, sep, 1, true)
        if i and string.sub(member, 1, i - 1) == rk then
            local rest = string.sub(member, i + #sep)
            local j = string.find(rest, sep, 1, true)
            return j and string.sub(rest, j + #sep) or rest
        end
    end
    return rk
end
local function resolve(ex, rk)
    if #ex > longest or #rk > longest then
        return nil, 'tenant_gate_route names an exchange or routing key longer than '
            .. longest .. ' characters'
    end
    if string.find(ex, '%c') or string.find(rk, '%c') then
        return nil, "tenant_gate_route contains control characters (such as kombu's "
            .. 'priority separator)'
    end
    if ex == '' and rk == '' then
        return nil, 'tenant_gate_route has neither an exchange nor a routing key'
    end
    local dest, why = rk, nil
    if ex ~= '' then dest, why = bound_queue(ex, rk) end
    if dest == nil then return nil, why end
    if dest == '' or #dest > longest or string.find(dest, '%c') then
        return nil, 'tenant_gate_route leads to no usable queue'
    end
    if dest == src then
        return nil, 'tenant_gate_route leads back to its own held queue ' .. src
    end
    if tenant_pattern ~= '' and string.find(dest, tenant_pattern) then
        return nil, 'tenant_gate_route leads to the held tenant queue ' .. dest
    end
    return dest
end
local function route_of(headers)
    local route = headers.tenant_gate_route
    if route == nil then return fallback end
    if type(route) ~= 'table' or type(route.exchange) ~= 'string'
        or type(route.routing_key) ~= 'string' then
        return nil, 'tenant_gate_route header is not an object with a string exchange '
            .. 'and a string routing_key'
    end
    local key = route.exchange .. sep .. route.routing_key
    if routes[key] == nil then
        local dest, why = resolve(route.exchange, route.routing_key)
        routes[key] = {dest, why}
    end
    return routes[key][1], routes[key][2]
end
local function queue_kind(key)
    if kinds[key] == nil then kinds[key] = redis.call('TYPE', key).ok end
    return kinds[key]
end
local function text(value)
    if type(value) ~= 'string' then return '' end
    return (string.gsub(value, '%c', '?'))
end

local ids, names, dests, moved, rejected, RS = {}, {}, {}, 0, 0, string.char(30)
local plan = {}
for i, step in ipairs(steps) do
    plan[i] = {}
    for n, raw in ipairs(read[i]) do
        local ok, msg = pcall(cjson.decode, raw)
        local dest, why
        if not ok or type(msg) ~= 'table' or type(msg.headers) ~= 'table' then
            why = 'not a kombu message (no JSON object with a headers object)'
        else
            dest, why = route_of(msg.headers)
        end
        if dest then
            local kind = queue_kind(list_of(dest, step))
            if kind ~= 'list' and kind ~= 'none' then
                dest, why = nil, 'its queue ' .. dest .. ' is a Redis ' .. kind .. ', not a list'
            end
        end
        plan[i][n] = {dest, why}
        if dest then
            moved = moved + 1
            if tell then
                ids[moved], names[moved] = text(msg.headers.id), text(msg.headers.task)
                dests[moved] = dest
            end
        else
            rejected = rejected + 1
        end
    end
end

-- Move, then remove from the tenant queue what was moved or rejected.
for i, step in ipairs(steps) do
    local items, count = read[i], #read[i]
    for n = 1, count do
        local why = plan[i][n][2]
        if not plan[i][n][1] then redis.call('LPUSH', rejects, #why .. ':' .. why .. items[n]) end
    end
    for k = 1, count do
        local n = k
        if mode == 'head' then n = count + 1 - k end  -- newest first to the consuming end
        local dest = plan[i][n][1]
        if dest and mode == 'head' then
            redis.call('RPUSH', list_of(dest, step), items[n])
        elseif dest then
            redis.call('LPUSH', list_of(dest, step), items[n])
        end
    end
    if count > 0 then redis.call('LTRIM', list_of(src, step), 0, -(count + 1)) end
end
if mode == 'tail' then redis.call('SET', mark, '1', 'PX', 86400000) end

local function column(t) return table.concat(t, RS, 1, moved) end
local taken = {#read[1], #read[2], #read[3], #read[4]}
if not tell then
    return {0, taken[1], taken[2], taken[3], taken[4], moved, rejected, '', '', ''}
end
return {0, taken[1], taken[2], taken[3], taken[4], moved, rejected,
    column(ids), column(names), column(dests)}
