"""The Redis script that merges a batch's local sessions into a session table.

Each local session (a key's events of one batch less than `gap` apart) is merged with
every stored session of its key within `gap` of it (and in the same maxDuration period):
their aggregates are combined (count and sum added, avg from the stored sum and count,
min/max compared, distinct sets united), the merged-away sessions are deleted (and
published as deleted), and the result is stored under its first event's time. The
script is fenced by the partition's checkpoint like every other table write
(script_parts.fence), so a replayed batch merges nothing twice, and sessions of a key
whose events arrive in several partitions merge the same way.

Layout: flowmill.serving. A failing script is not rolled back, so nothing in it can fail
after the first write: sums that are not finite doubles mark the session with
`_error:{aggregate}` instead (as window tables do).
"""

from __future__ import annotations

from flowmill_workers.sinks.script_parts import (
    EMIT_RECORD,
    PUBLISH_FINALS,
    fence,
    own_mark,
    table_watermark,
)

# KEYS[1] checkpoint hash.
# ARGV: 1 checkpoint field, 2 expected first offset, 3 next offset, 4 watermark or "",
#       5 table prefix, 6 ttl seconds, 7 gap ms, 8 maxDuration ms (0: none),
#       9 aggregates JSON [[name, op]], 10 updates JSON [[key, first ms, last ms,
#       [partial per aggregate]]], 11 channel or "", 12 table name, 13 sessions retained
#       per key, 14 "1" if the checkpoint may be absent, 15 allowed lateness ms,
#       16 watermark fields JSON, 17 emit mode ("" or "final"), 18 outbox stream key,
#       19 now ms (the partition had events: idleness) or "".
# Returns {status, overflowed JSON [[key, start, aggregate]]}.
SESSION_SCRIPT = (
    fence(14)
    + """
local prefix, ttl, gap, maxd = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local aggs, updates = cjson.decode(ARGV[9]), cjson.decode(ARGV[10])
local channel, tname, retain = ARGV[11], ARGV[12], tonumber(ARGV[13])
local lateness = tonumber(ARGV[15])
local emit, outbox = ARGV[17], ARGV[18]
"""
    + table_watermark(own_mark(4), 16, 11, 17)
    + EMIT_RECORD
    + """
local function finite(x) return type(x) == 'number' and x == x and x > -math.huge and x < math.huge end
local function int(x) return string.format('%d', x) end
local function dbl(x) return string.format('%.17g', x) end
local function num(x) if x == cjson.null then return 0 / 0 end return x end
local sess, keysz, openk = prefix .. ':sess', prefix .. ':keys', prefix .. ':open'
local readf = {}
for _, a in ipairs(aggs) do
  for _, f in ipairs({a[1], '_s:' .. a[1], '_n:' .. a[1], '_error:' .. a[1]}) do
    readf[#readf + 1] = f
  end
end
local overflowed = {}
for _, u in ipairs(updates) do
  local key, first, last, parts = u[1], u[2], u[3], u[4]
  local wi = prefix .. ':wi:' .. key
  local function hkey(s) return prefix .. ':w:' .. key .. ':' .. s end
  local function dkey(s, name) return prefix .. ':d:' .. key .. ':' .. s .. ':' .. name end
  -- Stored sessions that may lie within the gap: starting before last + gap (and in
  -- first's maxDuration period), newest first; they do not overlap, so the walk stops
  -- at the first one ending gap or more before `first`.
  local lo, hi = '-inf', last + gap
  if maxd > 0 then
    lo = first - first % maxd
    if lo + maxd < hi then hi = lo + maxd end
    lo = int(lo)
  end
  local cands = redis.call('ZREVRANGEBYSCORE', wi, '(' .. int(hi), lo)
  local tot, errs = {}, {}
  for i, a in ipairs(aggs) do
    local op, d = a[2], parts[i]
    if op == 'avg' then tot[i] = {num(d[1]), d[2]}
    elseif op == 'min' or op == 'max' then
      if d == cjson.null then tot[i] = false else tot[i] = d end
    elseif op == 'sum' then tot[i] = num(d)
    else tot[i] = d end
  end
  local start, newest = first, last
  local merged = {}
  for _, s in ipairs(cands) do
    local row = redis.call('HMGET', hkey(s), 'last', unpack(readf))
    if not row[1] then
      redis.call('ZREM', wi, s)  -- expired by the ttl: its index entry outlived it
    elseif tonumber(row[1]) <= first - gap then
      break
    else
      local l = tonumber(row[1])
      merged[#merged + 1] = {s, l}
      if tonumber(s) < start then start = tonumber(s) end
      if l > newest then newest = l end
      for i, a in ipairs(aggs) do
        local op, b = a[2], (i - 1) * 4 + 1
        local v, ss, nn, e = row[b + 1], row[b + 2], row[b + 3], row[b + 4]
        if e then errs[i] = e end
        if op == 'count' then tot[i] = tot[i] + tonumber(v or '0')
        elseif op == 'sum' then if v then tot[i] = tot[i] + tonumber(v) end
        elseif op == 'avg' then
          if ss then
            tot[i][1] = tot[i][1] + tonumber(ss)
            tot[i][2] = tot[i][2] + tonumber(nn)
          end
        elseif op == 'min' then
          if v and (tot[i] == false or tonumber(v) < tot[i]) then tot[i] = tonumber(v) end
        elseif op == 'max' then
          if v and (tot[i] == false or tonumber(v) > tot[i]) then tot[i] = tonumber(v) end
        end
      end
    end
  end
  local ns = int(start)
  local h = hkey(ns)
  for i, a in ipairs(aggs) do
    if a[2] == 'distinct' then
      local dest = dkey(ns, a[1])
      for _, m in ipairs(merged) do
        if m[1] ~= ns then redis.call('SUNIONSTORE', dest, dest, dkey(m[1], a[1])) end
      end
      for _, v in ipairs(tot[i]) do redis.call('SADD', dest, v) end
      tot[i] = redis.call('SCARD', dest)
      if ttl > 0 then redis.call('EXPIRE', dest, ttl) end
    end
  end
  for _, m in ipairs(merged) do
    local s = m[1]
    redis.call('DEL', hkey(s))
    redis.call('ZREM', sess, s .. ':' .. key)
    redis.call('ZREM', openk, s .. ':' .. key)
    if s ~= ns then
      redis.call('ZREM', wi, s)
      for _, a in ipairs(aggs) do
        if a[2] == 'distinct' then redis.call('DEL', dkey(s, a[1])) end
      end
      if channel ~= '' then
        redis.call('PUBLISH', channel, cjson.encode({table = tname, key = key,
          window = {start = tonumber(s), ['end'] = m[2] + gap, last = m[2]},
          values = cjson.null, deleted = true, merged_into = start}))
      end
    end
  end
  local e = newest + gap
  local fields = {'start', ns, 'last', int(newest), 'end', int(e)}
  local out = {}
  for i, a in ipairs(aggs) do
    local name, op, t = a[1], a[2], tot[i]
    local v = nil
    if (op == 'sum' and not finite(t)) or (op == 'avg' and not finite(t[1])) then
      if not errs[i] then table.insert(overflowed, {key, ns, name}) end
      errs[i] = 'overflow: the ' .. op .. ' is beyond the range of a double'
    end
    if errs[i] then
      fields[#fields + 1] = '_error:' .. name
      fields[#fields + 1] = errs[i]
    elseif op == 'count' or op == 'distinct' then v = int(t)
    elseif op == 'sum' then v = dbl(t)
    elseif op == 'avg' then
      if t[2] > 0 then
        fields[#fields + 1] = '_s:' .. name
        fields[#fields + 1] = dbl(t[1])
        fields[#fields + 1] = '_n:' .. name
        fields[#fields + 1] = int(t[2])
        v = dbl(t[1] / t[2])
      end
    elseif t ~= false then v = dbl(t)
    end
    if v then
      fields[#fields + 1] = name
      fields[#fields + 1] = v
      out[name] = tonumber(v)
    end
  end
  redis.call('HSET', h, unpack(fields))
  redis.call('ZADD', wi, start, ns)
  redis.call('ZADD', keysz, 'GT', start, key)
  redis.call('ZADD', sess, e, ns .. ':' .. key)
  if channel ~= '' or emit == 'final' then
    redis.call('ZADD', openk, e + lateness, ns .. ':' .. key)
  end
  local extra = redis.call('ZCARD', wi) - retain
  if extra > 0 then
    for _, s in ipairs(redis.call('ZRANGE', wi, 0, extra - 1)) do
      redis.call('DEL', hkey(s))
      redis.call('ZREM', sess, s .. ':' .. key)
      redis.call('ZREM', openk, s .. ':' .. key)
      for _, a in ipairs(aggs) do
        if a[2] == 'distinct' then redis.call('DEL', dkey(s, a[1])) end
      end
    end
    redis.call('ZREMRANGEBYRANK', wi, 0, extra - 1)
  end
  if ttl > 0 then
    redis.call('EXPIRE', h, ttl)
    redis.call('EXPIRE', wi, ttl)
    redis.call('ZREMRANGEBYSCORE', keysz, '-inf', '(' .. int(start - ttl * 1000))
    redis.call('ZREMRANGEBYSCORE', sess, '-inf', '(' .. int(e - ttl * 1000))
    for _, k in ipairs({keysz, sess, openk}) do redis.call('EXPIRE', k, ttl) end
  end
  if channel ~= '' then
    redis.call('PUBLISH', channel, cjson.encode({table = tname, key = key,
      window = {start = start, ['end'] = e, last = newest}, values = out,
      final = (W ~= nil and e + lateness <= W), watermark = W}))
  end
end
"""
    + PUBLISH_FINALS
    + """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], ARGV[1] .. ':wm', ARGV[4]) end
if ARGV[19] ~= '' then redis.call('HSET', KEYS[1], ARGV[1] .. ':seen', ARGV[19]) end
return {1, cjson.encode(overflowed)}
"""
)
