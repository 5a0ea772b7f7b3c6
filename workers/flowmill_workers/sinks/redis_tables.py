"""The Redis sink: serving tables the API reads, written exactly once per input offset.

Each partition's batch is applied by one Lua script that first checks the partition's
checkpoint: the script runs only if the checkpoint equals the batch's first offset, and
it advances the checkpoint in the same atomic step. So a batch replayed after a crash
(or written late by a worker that lost its partitions) is skipped, never added twice,
and final values are exact. Partials from different partitions of the same key merge in
Redis, so exactness does not depend on how the input topic is keyed. Window tables go
one step further: the partials of all partitions of a batch are merged by the worker and
written by one script that fences every partition's checkpoint at once (all pass, or
nothing is written and the worker writes them one by one).

The layout is documented in flowmill.serving.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from flowmill import serving
from flowmill.spec import StepSpec, duration_seconds
from flowmill_workers.sinks.redis_sessions import SESSION_SCRIPT
from flowmill_workers.sinks.script_parts import (
    EMIT_RECORD,
    FENCE_ALL,
    PUBLISH_FINALS,
    table_watermark,
)
from flowmill_workers.sinks.script_parts import fence as _fence
from flowmill_workers.steps.sessions import SessionAggregator

log = logging.getLogger("flowmill.worker")

MAX_TTL_SECONDS = 100 * 366 * 86400
"""Redis refuses an EXPIRE past its 64-bit millisecond clock, and a refused EXPIRE inside a
script fails the script half-way; a longer `ttl` is capped here (with a warning)."""


# KEYS[1] checkpoint hash.
# ARGV: 1 partitions JSON [[checkpoint field, expected first offset, next offset,
#       watermark or "", "1" if the checkpoint may be absent, now ms (the partition had
#       events: idleness) or ""]] (see script_parts.FENCE_ALL), 2 table prefix,
#       3 ttl seconds, 4 window size ms, 5 aggregates JSON [[name, op]], 6 updates JSON
#       [[key, start, [partial per aggregate]]] (the partitions' partials merged),
#       7 channel or "", 8 table name, 9 windows retained per key, 10 allowed lateness ms,
#       11 watermark fields JSON (serving.watermark_fields), 12 emit mode ("", "updates"
#       or "final": window records for the kafka sink), 13 outbox stream key.
# Returns {status, overflowed JSON [[key, start, aggregate]]}; see script_parts.fence.
# With a channel or emit final, each window is also kept in `open` until it is final.
_WINDOW_SCRIPT = (
    """
local parts = cjson.decode(ARGV[1])
"""
    + FENCE_ALL
    + """
local marks = {}
for _, p in ipairs(parts) do
  if p[4] ~= '' then marks[p[1] .. ':wm'] = p[4] end
end
local prefix, ttl, size = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local aggs, updates = cjson.decode(ARGV[5]), cjson.decode(ARGV[6])
local channel, retain, tname = ARGV[7], tonumber(ARGV[9]), ARGV[8]
local lateness = tonumber(ARGV[10])
local emit, outbox = ARGV[12], ARGV[13]
"""
    + table_watermark("marks", 11, 7, 12)
    + EMIT_RECORD
    + """
-- Each update's hash is read once (HMGET of every field the checks and min/max need),
-- written once (one HSET); the table-wide indexes (top-N sets, a key's windows, keys,
-- wins) are written once per batch after the loop, in as few commands as give the state
-- the per-update order gave: a batch's (key, start) pairs are distinct, so no update
-- reads what another writes, and trimming a key's windows to `retain` once after all
-- its adds removes what trimming after each add removed.
-- Counts, sums and means are added here, from what HMGET read, and written with the
-- rest in the one HSET: HINCRBY/HINCRBYFLOAT per aggregate were most of the script's
-- commands. Lua adds in doubles; totals are stored with 17 significant digits (%.17g),
-- which a double reads back exactly.
local reads, at_val, at_err, at_name, at_n = {}, {}, {}, {}, {}
for i, a in ipairs(aggs) do
  local op, name = a[2], a[1]
  if op == 'count' then
    table.insert(reads, name)
    at_val[i] = #reads
  end
  if op == 'sum' or op == 'avg' then
    table.insert(reads, op == 'avg' and '_s:' .. name or name)
    at_val[i] = #reads
    table.insert(reads, '_error:' .. name)
    at_err[i] = #reads
  end
  if op == 'avg' then
    table.insert(reads, '_n:' .. name)
    at_n[i] = #reads
  end
  if op == 'avg' or op == 'min' or op == 'max' then
    table.insert(reads, name)
    at_name[i] = #reads
  end
end
local function dbl(x) return string.format('%.17g', x) end
local s_field, n_field = {}, {}
for i, a in ipairs(aggs) do s_field[i], n_field[i] = '_s:' .. a[1], '_n:' .. a[1] end
local want_out, want_stored = channel ~= '', emit == 'updates'
-- A failing script is not rolled back, so everything that could fail is checked before
-- the first write: a sum or mean whose new total is not a finite double (an overflow,
-- or a batch partial that already overflowed and arrives as null) is not applied; the
-- window is marked with _error:{aggregate} for good instead, and its count stays exact.
local function finite(x) return type(x) == 'number' and x == x and x > -math.huge and x < math.huge end
-- Lua strings are interned: every key built costs a hash of its text, so each window's
-- key is built once (hashes[j]) and each top-N set's once per batch (top_keys), and
-- `skip` is indexed by number.
local skip, overflowed, rows, hashes, na = {}, {}, {}, {}, #aggs
for j, u in ipairs(updates) do
  local h = prefix .. ':w:' .. u[1] .. ':' .. u[2]
  hashes[j] = h
  local row = {}
  if #reads > 0 then row = redis.call('HMGET', h, unpack(reads)) end
  rows[j] = row
  for i, a in ipairs(aggs) do
    local op, d = a[2], u[3][i]
    if op == 'sum' or (op == 'avg' and d[2] > 0) then
      local add = d
      if op == 'avg' then add = d[1] end
      local err = row[at_err[i]]
      local ok = err == false and finite(add)
      if ok then ok = finite(tonumber(row[at_val[i]] or '0') + add) end
      if not ok then
        skip[(j - 1) * na + i] = true
        if err == false then table.insert(overflowed, {u[1], u[2], a[1]}) end
      end
    end
  end
end
-- Deferred index writes: top-N members per (start, aggregate), each key's window
-- starts, each key's newest start.
local tops, top_order, key_wins, key_order, key_newest = {}, {}, {}, {}, {}
local top_keys_of = {}
-- `wins` as adding each start and dropping those `retain` windows behind it, update
-- by update, would leave it: a start stays if it is within `retain` windows of every
-- start added after it (suffix maxima), older members if within those of the newest.
local span = retain * size
local suffix, newest = {}, nil
for j = #updates, 1, -1 do
  local sn = tonumber(updates[j][2])
  if newest == nil or sn > newest then newest = sn end
  suffix[j] = newest
end
for j, u in ipairs(updates) do
  local key, start, parts = u[1], u[2], u[3]
  local h = hashes[j]
  local startn = tonumber(start)
  local top_keys = top_keys_of[start]
  if top_keys == nil then
    top_keys = {}
    for i, a in ipairs(aggs) do top_keys[i] = prefix .. ':top:' .. start .. ':' .. a[1] end
    top_keys_of[start] = top_keys
  end
  local row = rows[j]
  local hset = {'start', start, 'end', string.format('%d', startn + size)}
  local nh = 4
  local out, stored = nil, nil
  if want_out then out = {} end
  if want_stored then stored = {} end
  for i, a in ipairs(aggs) do
    local name, op, d = a[1], a[2], parts[i]
    local v = nil
    if skip[(j - 1) * na + i] then
      if redis.call('HSETNX', h, '_error:' .. name,
          'overflow: the ' .. op .. ' is beyond the range of a double') == 1 then
        redis.call('HDEL', h, name, s_field[i], n_field[i])
        redis.call('ZREM', top_keys[i], key)
      end
    elseif op == 'count' then
      v = tonumber(row[at_val[i]] or '0') + d
      hset[nh + 1], hset[nh + 2], nh = name, string.format('%d', v), nh + 2
    elseif op == 'sum' then
      v = dbl(tonumber(row[at_val[i]] or '0') + d)
      hset[nh + 1], hset[nh + 2], nh = name, v, nh + 2
    elseif op == 'avg' then
      if d[2] > 0 then
        local s = tonumber(row[at_val[i]] or '0') + d[1]
        local n = tonumber(row[at_n[i]] or '0') + d[2]
        v = dbl(s / n)
        hset[nh + 1], hset[nh + 2] = s_field[i], dbl(s)
        hset[nh + 3], hset[nh + 4] = n_field[i], string.format('%d', n)
        hset[nh + 5], hset[nh + 6], nh = name, v, nh + 6
      else
        v = row[at_name[i]]
      end
    elseif op == 'min' or op == 'max' then
      local cur = row[at_name[i]]
      if d ~= cjson.null then
        if not cur or (op == 'min' and d < tonumber(cur)) or (op == 'max' and d > tonumber(cur)) then
          cur = dbl(d)
          hset[nh + 1], hset[nh + 2], nh = name, cur, nh + 2
        end
      end
      v = cur
    elseif op == 'distinct' then
      local dk = prefix .. ':d:' .. key .. ':' .. start .. ':' .. name
      for _, m in ipairs(d) do redis.call('SADD', dk, m) end
      if ttl > 0 then redis.call('EXPIRE', dk, ttl) end
      v = redis.call('SCARD', dk)
      hset[nh + 1], hset[nh + 2], nh = name, v, nh + 2
    end
    if v then
      if out then out[name] = tonumber(v) end
      if stored then
        if type(v) == 'number' then stored[name] = string.format('%d', v) else stored[name] = v end
      end
      local top = top_keys[i]
      local members = tops[top]
      if members == nil then members = {} tops[top] = members table.insert(top_order, top) end
      members[#members + 1] = v
      members[#members + 1] = key
    end
  end
  redis.call('HSET', h, unpack(hset))
  if key_wins[key] == nil then key_wins[key] = {} table.insert(key_order, key) end
  table.insert(key_wins[key], startn) table.insert(key_wins[key], start)
  if ttl > 0 then
    -- Keys silent for longer than the TTL leave the index: in update order, since a key
    -- dropped here may come back with a later update.
    redis.call('ZADD', prefix .. ':keys', 'GT', startn, key)
    redis.call('ZREMRANGEBYSCORE', prefix .. ':keys', '-inf',
      '(' .. string.format('%d', startn - ttl * 1000))
    redis.call('EXPIRE', h, ttl)
  elseif key_newest[key] == nil or startn > key_newest[key] then
    key_newest[key] = startn
  end
  local closes = startn + size + lateness
  if channel ~= '' or emit == 'final' then
    redis.call('ZADD', prefix .. ':open', closes, start .. ':' .. key)
  end
  if channel ~= '' then
    redis.call('PUBLISH', channel, cjson.encode({table = tname, key = key,
      window = {start = startn, ['end'] = startn + size}, values = out,
      final = (W ~= nil and closes <= W), watermark = W}))
  end
  if emit == 'updates' then
    emit_record(key, start, string.format('%d', startn + size), nil,
      W ~= nil and closes <= W, stored)
  end
end
-- ZADD with many members, in chunks (Lua's unpack has a stack limit).
local function zadd_all(zkey, flag, items)
  for c = 1, #items, 2000 do
    local args = {}
    if flag then args[1] = flag end
    for x = c, math.min(c + 1999, #items) do args[#args + 1] = items[x] end
    redis.call('ZADD', zkey, unpack(args))
  end
end
-- Highest score first: a new window's top-N set starts as a listpack (Redis 7.0 keeps
-- its first 128 members in one), whose insert walks from the head parsing each score,
-- so members added in descending order each stop at the head; in arrival order the
-- top-N writes were a third of the benchmark step's script time.
local function by_score_desc(a, b) return a[1] > b[1] end
for _, top in ipairs(top_order) do
  local flat, ranked = tops[top], {}
  for x = 1, #flat, 2 do ranked[#ranked + 1] = {tonumber(flat[x]), flat[x + 1], flat[x]} end
  table.sort(ranked, by_score_desc)
  local sorted = {}
  for x, m in ipairs(ranked) do sorted[2 * x - 1], sorted[2 * x] = m[3], m[2] end
  zadd_all(top, nil, sorted)
  if ttl > 0 then redis.call('EXPIRE', top, ttl) end
end
if newest ~= nil then
  -- Keep the table-wide indexes as bounded as the data they point at: windows older
  -- than `retain` windows leave `wins` (keys silent for longer than the TTL, `keys`).
  local wins = prefix .. ':wins'
  redis.call('ZREMRANGEBYSCORE', wins, '-inf', '(' .. string.format('%d', newest - span))
  local kept = {}
  for j, u in ipairs(updates) do
    local sn = tonumber(u[2])
    if sn >= suffix[j] - span then table.insert(kept, sn) table.insert(kept, u[2]) end
  end
  zadd_all(wins, nil, kept)
  if ttl == 0 then
    local newest_keys = {}
    for _, key in ipairs(key_order) do
      table.insert(newest_keys, key_newest[key]) table.insert(newest_keys, key)
    end
    zadd_all(prefix .. ':keys', 'GT', newest_keys)
  else
    redis.call('EXPIRE', prefix .. ':keys', ttl)
    redis.call('EXPIRE', wins, ttl)
  end
end
for _, key in ipairs(key_order) do
  local wi = prefix .. ':wi:' .. key
  zadd_all(wi, nil, key_wins[key])
  if ttl > 0 then redis.call('EXPIRE', wi, ttl) end
  local extra = redis.call('ZCARD', wi) - retain
  if extra > 0 then
    local old = redis.call('ZRANGE', wi, 0, extra - 1)
    for _, s in ipairs(old) do
      redis.call('DEL', prefix .. ':w:' .. key .. ':' .. s)
      for _, a in ipairs(aggs) do redis.call('ZREM', prefix .. ':top:' .. s .. ':' .. a[1], key) end
      if channel ~= '' or emit == 'final' then redis.call('ZREM', prefix .. ':open', s .. ':' .. key) end
    end
    redis.call('ZREMRANGEBYRANK', wi, 0, extra - 1)
  end
end
if (channel ~= '' or emit == 'final') and ttl > 0 and #updates > 0 then
  redis.call('EXPIRE', prefix .. ':open', ttl)
end
"""
    + PUBLISH_FINALS
    + """
for _, p in ipairs(parts) do
  redis.call('HSET', KEYS[1], p[1], p[3])
  if p[4] ~= '' then redis.call('HSET', KEYS[1], p[1] .. ':wm', p[4]) end
  if p[6] ~= '' then redis.call('HSET', KEYS[1], p[1] .. ':seen', p[6]) end
end
return {1, cjson.encode(overflowed)}
"""
)

# KEYS[1] checkpoint hash.
# ARGV: 1 field, 2 expected first offset, 3 next offset, 4 table prefix, 5 ttl seconds,
#       6 updates JSON [[key, time ms, event JSON or "" to delete]], 7 channel or "",
#       8 table, 9 geo JSON [lat field, lon field] or "", 10 expire-after ms (0: never),
#       11 "1" if the checkpoint may be absent.
_LATEST_SCRIPT = (
    _fence(11)
    + """
local prefix, ttl = ARGV[4], tonumber(ARGV[5])
local updates = cjson.decode(ARGV[6])
local channel, geo, expire = ARGV[7], ARGV[9], tonumber(ARGV[10])
local latest, updated = prefix .. ':latest', prefix .. ':updated'
local newest = 0
for _, u in ipairs(updates) do
  local key, ts, body = u[1], u[2], u[3]
  if ts > newest then newest = ts end
  if body == '' then
    redis.call('HDEL', latest, key)
    redis.call('ZREM', updated, key)
    if geo ~= '' then redis.call('ZREM', prefix .. ':geo', key) end
  else
    redis.call('HSET', latest, key, body)
    redis.call('ZADD', updated, ts, key)
    if geo ~= '' then
      local g = cjson.decode(geo)
      local ev = cjson.decode(body)
      local lat, lon = tonumber(ev[g[1]]), tonumber(ev[g[2]])
      if lat and lon and lat >= -85.05 and lat <= 85.05 and lon >= -180 and lon <= 180 then
        redis.call('GEOADD', prefix .. ':geo', lon, lat, key)
      end
    end
  end
  if channel ~= '' then
    local values = cjson.null
    if body ~= '' then values = cjson.decode(body) end
    redis.call('PUBLISH', channel, cjson.encode({table = ARGV[8], key = key,
      window = cjson.null, values = values, deleted = (body == '')}))
  end
end
if expire > 0 and newest > 0 then
  local stale = redis.call('ZRANGEBYSCORE', updated, '-inf', '(' .. (newest - expire))
  for _, key in ipairs(stale) do
    redis.call('HDEL', latest, key)
    if geo ~= '' then redis.call('ZREM', prefix .. ':geo', key) end
  end
  if #stale > 0 then redis.call('ZREMRANGEBYSCORE', updated, '-inf', '(' .. (newest - expire)) end
end
if ttl > 0 then
  redis.call('EXPIRE', latest, ttl)
  redis.call('EXPIRE', updated, ttl)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return {1, '[]'}
"""
)

# Moves a checkpoint past a batch without applying it (a batch dead-lettered because it
# failed deterministically). KEYS and ARGV 1-3 as above; ARGV 4 "1" if it may be absent.
_SKIP_SCRIPT = (
    _fence(4)
    + """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return {1, '[]'}
"""
)


@dataclass(frozen=True, slots=True)
class PartitionRange:
    """The offsets one batch covers in one partition: [first, next)."""

    topic: str
    partition: int
    first: int
    next: int

    @property
    def field(self) -> str:
        return f"{self.topic}:{self.partition}"


@dataclass(frozen=True, slots=True)
class BatchPosition:
    """What the window script's fence needs of one partition's batch."""

    rng: PartitionRange
    watermark: int | None
    """The partition's watermark after the batch."""
    starts_fresh: bool = True
    """The partition has no checkpoint yet: only its first batch may find none."""
    seen_ms: int | None = None
    """When the batch had events (kept for window.idleTimeout)."""

    def wire(self) -> list[str]:
        # Strings, not JSON numbers: Lua would write numbers back in %.14g.
        wm = "" if self.watermark is None else str(self.watermark)
        seen = "" if self.seen_ms is None else str(self.seen_ms)
        fresh = "1" if self.starts_fresh else ""
        return [self.rng.field, str(self.rng.first), str(self.rng.next), wm, fresh, seen]


class RedisTableSink:
    """Writes one step's window or latest-state table."""

    def __init__(
        self,
        client: aioredis.Redis,
        pipeline: str,
        step: StepSpec,
        watermark_fields: Sequence[str] = (),
    ) -> None:
        if step.sink is None or step.sink.redis is None:
            raise ValueError(f"step {step.name} has no redis sink")
        self.client = client
        self.pipeline = pipeline
        self.step = step
        self.spec = step.sink.redis
        self.table = self.spec.table
        self.prefix = serving.table_prefix(pipeline, self.table)
        self.checkpoint = serving.checkpoint_key(pipeline, step.name)
        self.channel = serving.channel(pipeline, self.table) if self.spec.publish else ""
        self.ttl = int(duration_seconds(self.spec.ttl)) if self.spec.ttl else 0
        if self.ttl > MAX_TTL_SECONDS:
            log.warning(
                "table %s: ttl %s capped at %d s (100 years)",
                self.table,
                self.spec.ttl,
                MAX_TTL_SECONDS,
            )
            self.ttl = MAX_TTL_SECONDS
        self.status = status_key(pipeline, self.table)
        self.changes = serving.changes_channel(pipeline, self.table)
        self.watermark_fields = orjson.dumps(list(watermark_fields))
        """Whose minimum is the table's watermark (serving.watermark_fields)."""
        self.lateness_ms = step.window.lateness_ms() if step.window else 0
        kafka = step.sink.kafka
        self.emit = kafka.emit if kafka is not None and step.emits_windows() else ""
        """Which window records the scripts append to the outbox for the kafka sink."""
        self.outbox = serving.outbox_key(pipeline, step.name)
        self._window = client.register_script(_WINDOW_SCRIPT)
        self._sessions = client.register_script(SESSION_SCRIPT)
        self._latest = client.register_script(_LATEST_SCRIPT)
        self._skip = client.register_script(_SKIP_SCRIPT)

    async def apply_windows(
        self,
        pipe: Any,
        rng: PartitionRange,
        updates: list[list[Any]],
        aggregates: Sequence[tuple[str, str, str | None]],
        size_ms: int,
        retain: int,
        watermark: int | None,
        *,
        starts_fresh: bool = True,
        seen_ms: int | None = None,
    ) -> None:
        """Queue one partition's window partials on a pipeline (applied at execute);
        `starts_fresh` says the partition has no checkpoint yet (see _fence); `seen_ms`,
        when the batch had events (kept for window.idleTimeout)."""
        position = BatchPosition(rng, watermark, starts_fresh, seen_ms)
        await self.apply_merged_windows(pipe, [position], updates, aggregates, size_ms, retain)

    async def apply_merged_windows(
        self,
        pipe: Any,
        positions: Sequence[BatchPosition],
        updates: list[list[Any]],
        aggregates: Sequence[tuple[str, str, str | None]],
        size_ms: int,
        retain: int,
    ) -> None:
        """Queue the merged window partials of several partitions' batches as one script,
        applied only if every partition's checkpoint fences them in (else none is)."""
        await self._window(
            keys=[self.checkpoint],
            args=[
                orjson.dumps([p.wire() for p in positions]),
                self.prefix,
                self.ttl,
                size_ms,
                orjson.dumps([[n, op] for n, op, _ in aggregates]),
                orjson.dumps(updates),
                self.channel,
                self.table,
                retain,
                self.lateness_ms,
                self.watermark_fields,
                self.emit,
                self.outbox,
            ],
            client=pipe,
        )

    async def apply_sessions(
        self,
        pipe: Any,
        rng: PartitionRange,
        updates: list[list[Any]],
        sessions: SessionAggregator,
        watermark: int | None,
        *,
        starts_fresh: bool = True,
        seen_ms: int | None = None,
    ) -> None:
        """Queue one partition's local sessions on a pipeline: each is merged with the
        key's stored sessions within the gap (flowmill_workers.sinks.redis_sessions)."""
        await self._sessions(
            keys=[self.checkpoint],
            args=[
                rng.field,
                rng.first,
                rng.next,
                "" if watermark is None else str(watermark),
                self.prefix,
                self.ttl,
                sessions.gap_ms,
                sessions.max_ms,
                orjson.dumps([[n, op] for n, op, _ in sessions.aggregates]),
                orjson.dumps(updates),
                self.channel,
                self.table,
                sessions.retain,
                "1" if starts_fresh else "",
                sessions.lateness_ms,
                self.watermark_fields,
                self.emit,
                self.outbox,
                "" if seen_ms is None else seen_ms,
            ],
            client=pipe,
        )

    async def apply_latest(
        self,
        pipe: Any,
        rng: PartitionRange,
        updates: list[list[Any]],
        expire_after_ms: int,
        *,
        starts_fresh: bool = True,
    ) -> None:
        """Queue one partition's latest-state updates on a pipeline."""
        geo = self.spec.geo
        await self._latest(
            keys=[self.checkpoint],
            args=[
                rng.field,
                rng.first,
                rng.next,
                self.prefix,
                self.ttl,
                orjson.dumps(updates),
                self.channel,
                self.table,
                orjson.dumps([geo.lat, geo.lon]).decode() if geo else "",
                expire_after_ms,
                "1" if starts_fresh else "",
            ],
            client=pipe,
        )

    def announce(self, pipe: Any) -> None:
        """Queue, last on a batch's pipeline, the announcement of its writes: Redis writes
        pending replies newest client first, so this puts the API's message on its socket
        before the writer has its last reply (flowmill_api.versions says why)."""
        pipe.publish(self.changes, "")

    async def skip(self, pipe: Any, rng: PartitionRange, *, starts_fresh: bool) -> None:
        """Queue moving the checkpoint past a batch without applying it."""
        await self._skip(
            keys=[self.checkpoint],
            args=[rng.field, rng.first, rng.next, "1" if starts_fresh else ""],
            client=pipe,
        )


APPLIED, REFUSED, LOST = 1, 0, -1
"""A script's status: the batch was applied; refused by the fence (the checkpoint is
elsewhere); or the checkpoint is missing where one was expected (the state was lost)."""


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    status: int
    overflowed: list[tuple[str, int, str]] = field(default_factory=list)
    """(key, window start, aggregate) newly marked as overflowed by this batch."""


def write_outcome(reply: Any) -> WriteOutcome:
    """A script's reply ({status, overflowed JSON}, and the window script's refusals
    the failing partition) as a WriteOutcome."""
    status, overflowed = reply[0], reply[1]
    marks = orjson.loads(overflowed)
    return WriteOutcome(int(status), [(k, int(s), a) for k, s, a in marks] if marks else [])


def status_key(pipeline: str, table: str) -> str:
    """A hash of what a reader must know about a table's completeness: fields
    `rebuilding:{topic}:{partition}` (the offset the rebuild must reach) while the step
    rebuilds the table from Kafka after the Redis data was lost, and
    `incomplete:{topic}:{partition}` (JSON) when Kafka no longer held all of it."""
    return serving.status_key(pipeline, table)


async def load_checkpoints(
    client: aioredis.Redis, pipeline: str, step: str
) -> dict[str, tuple[int, int | None]]:
    """`topic:partition` -> (next offset, watermark ms or None) for a step."""
    raw = await client.hgetall(serving.checkpoint_key(pipeline, step))
    offsets: dict[str, int] = {}
    marks: dict[str, int] = {}
    for k, v in raw.items():
        name = k.decode() if isinstance(k, bytes) else k
        if name.endswith(":wm"):
            marks[name[:-3]] = int(float(v))
        else:
            offsets[name] = int(v)
    return {tp: (offset, marks.get(tp)) for tp, offset in offsets.items()}
