"""Lua shared by the Redis sink's scripts: the checkpoint fence, a table's watermark, and
announcing the windows it made final."""

from __future__ import annotations


# Every script starts with the fence: it runs only if the partition's checkpoint equals
# the batch's first offset (ARGV[2]); else it returns {0} (refused: another worker or a
# replay moved it). An absent checkpoint is accepted only where the worker says the
# partition starts from nothing (ARGV[n] == "1"); otherwise the checkpoint, and with it
# the table, was lost (a Redis restarted empty) and the script returns {-1} untouched.
def fence(n: int) -> str:
    return f"""
local ck = redis.call('HGET', KEYS[1], ARGV[1])
if ck then
  if tonumber(ck) ~= tonumber(ARGV[2]) then return {{0, '[]'}} end
elseif ARGV[{n}] ~= '1' then
  return {{-1, '[]'}}
end
"""


# The window script's fence covers several partitions at once (their partials merged
# into one set of updates, so a batch of four partitions costs one script, not four):
# `parts` is the decoded JSON list [[field, first, next, watermark or "", fresh, seen]]
# (fresh "1" where the checkpoint may be absent). Every partition must pass before
# anything is written; else {status, '[]', i} names the first that did not (1-based), and
# the worker writes them one by one to learn each partition's outcome.
FENCE_ALL = """
local fields = {}
for i, p in ipairs(parts) do fields[i] = p[1] end
local cks = redis.call('HMGET', KEYS[1], unpack(fields))
for i, p in ipairs(parts) do
  local ck = cks[i]
  if ck then
    if tonumber(ck) ~= tonumber(p[2]) then return {0, '[]', i} end
  elseif p[5] ~= '1' then
    return {-1, '[]', i}
  end
end
"""


def table_watermark(own_marks: str, fields: int, *needed_by: int) -> str:
    """Sets local W to the table's watermark once this batch is applied: the smallest
    of its input partitions' (JSON list in ARGV[fields]), taking the batch's new ones
    from `own_marks` (a Lua expression: a table of `{field}:wm` -> watermark), nil while
    any partition has none. Only reads, and only when one of ARGV[needed_by] is set (a
    channel to publish on, an emit mode): W decides final."""
    needed = " or ".join(f"ARGV[{i}] ~= ''" for i in needed_by)
    return f"""
local W = nil
if {needed} then
  local wmf = cjson.decode(ARGV[{fields}])
  if #wmf > 0 then
    local vals = redis.call('HMGET', KEYS[1], unpack(wmf))
    local own = {own_marks}
    for i, f in ipairs(wmf) do
      local v = own[f] or vals[i]
      if not v then W = nil break end
      v = tonumber(v)
      if W == nil or v < W then W = v end
    end
  end
end
"""


def own_mark(watermark: int) -> str:
    """`own_marks` for a one-partition script: its field in ARGV[1], its watermark in
    ARGV[watermark] ("" when it has none yet)."""
    return f"{{[ARGV[1] .. ':wm'] = (ARGV[{watermark}] ~= '' and ARGV[{watermark}] or nil)}}"


# Appends one window record to the step's outbox stream (flowmill.serving.outbox_key),
# which the step's emitter moves to its kafka topic. Values go as Redis stored them
# (cjson would round them to 14 digits). Needs locals outbox and aggs.
EMIT_RECORD = """
local function emit_record(key, start, wend, last, final, values)
  local rec = {'k', key, 's', start, 'e', wend, 'f', final and '1' or '0',
    'w', W and string.format('%d', W) or ''}
  if last then rec[#rec + 1] = 'l' rec[#rec + 1] = last end
  for _, a in ipairs(aggs) do
    local v = values[a[1]]
    if v then rec[#rec + 1] = 'v:' .. a[1] rec[#rec + 1] = v end
  end
  redis.call('XADD', outbox, '*', unpack(rec))
end
"""


# Needs locals prefix, channel, emit, aggs, W and the table name in `tname` (and
# EMIT_RECORD). Each window (or session) in `{prefix}:open` whose score (end +
# allowedLateness) the watermark reached is published once as a `final` event (and, with
# emit final, appended to the outbox) and leaves the set; this runs in the fenced script,
# so a replayed batch announces nothing twice.
PUBLISH_FINALS = """
if (channel ~= '' or emit == 'final') and W ~= nil then
  local openk = prefix .. ':open'
  local due = redis.call('ZRANGEBYSCORE', openk, '-inf', W)
  if #due > 0 then
    local names = {}
    for i, a in ipairs(aggs) do names[i] = a[1] end
    for _, m in ipairs(due) do
      local c = string.find(m, ':', 1, true)
      local start, key = string.sub(m, 1, c - 1), string.sub(m, c + 1)
      local row = redis.call('HMGET', prefix .. ':w:' .. key .. ':' .. start, 'end', 'last',
        unpack(names))
      if row[1] and channel ~= '' then
        local values = {}
        for i, n in ipairs(names) do
          if row[i + 2] then values[n] = tonumber(row[i + 2]) end
        end
        local window = {start = tonumber(start), ['end'] = tonumber(row[1])}
        if row[2] then window.last = tonumber(row[2]) end
        redis.call('PUBLISH', channel, cjson.encode({table = tname, key = key,
          window = window, values = values, final = true, event = 'final', watermark = W}))
      end
      if row[1] and emit == 'final' then
        local stored = {}
        for i, n in ipairs(names) do stored[n] = row[i + 2] or nil end
        emit_record(key, start, row[1], row[2] or nil, true, stored)
      end
    end
    redis.call('ZREMRANGEBYSCORE', openk, '-inf', W)
  end
end
"""
