"""Reads of the serving tables (layout in flowmill.serving), one Redis round trip each.

A key's windows are answered from memory while no write to their table was announced
since they were read (flowmill_api.versions: the writers announce every write), so a value is
never older than the last batch a worker applied; everything else is read from Redis on
every request. The status hash
(whether the table is being rebuilt, or incomplete) is read at most once per
STATUS_CACHE_S per table, so the hottest reads stay one round trip. What would otherwise take several dependent
round trips (find a key's newest window, then read it; rank a window's keys, then read
each) runs as one read-only Lua script, and independent reads go in one pipeline.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Iterable
from typing import Any, cast

import orjson

from flowmill import serving
from flowmill_api.catalog import INTEGER_OPS, Table
from flowmill_api.redis_pool import RedisPool
from flowmill_api.versions import VersionWatch


def _watermark(count_arg: int) -> str:
    """Lua setting W to the table's watermark: the smallest of the checkpoint (KEYS[2])
    fields ARGV[count_arg + 1 ...] (ARGV[count_arg] of them), nil while one is missing;
    `fields` gets the arguments after them (the hash fields to read)."""
    return f"""
local k = tonumber(ARGV[{count_arg}])
local W = nil
if k > 0 then
  local wmf = {{}}
  for i = {count_arg} + 1, {count_arg} + k do wmf[#wmf + 1] = ARGV[i] end
  for _, v in ipairs(redis.call('HMGET', KEYS[2], unpack(wmf))) do
    if not v then W = nil break end
    v = tonumber(v)
    if W == nil or v < W then W = v end
  end
end
local fields = {{}}
for i = {count_arg} + k + 1, #ARGV do fields[#fields + 1] = ARGV[i] end
local function is_final(row) return W ~= nil and row[1] and tonumber(row[1]) + LATE <= W end
local function wanted(row, want)
  if want == 'any' then return true end
  return row[1] and (want == 'final') == (is_final(row) and true or false)
end
"""


# KEYS[1] the key's window index, KEYS[2] the step's checkpoint. ARGV: 1 window hash
# prefix (…:w:{key}:), 2 mode (`last`: the newest ARGV[5]; `range`: scores ARGV[3]..ARGV[4],
# at most ARGV[5]), 6 want (any|final|open), 7 allowed lateness ms, 8 k, 9… the k
# watermark fields, then the fields to read (`end`, then the aggregates; internal partials
# are never read). Returns {index size, watermark or '', start, values, …}.
_KEY_WINDOWS = (
    "local LATE = tonumber(ARGV[7])\n"
    + _watermark(8)
    + """
local want, n = ARGV[6], tonumber(ARGV[5])
local out = {redis.call('ZCARD', KEYS[1]), W and string.format('%d', W) or ''}
local found, offset, chunk = 0, 0, n
if want ~= 'any' then chunk = math.max(n, 64) end
while found < n do
  local starts
  if ARGV[2] == 'last' then
    starts = redis.call('ZREVRANGE', KEYS[1], offset, offset + chunk - 1)
  else
    starts = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[3], ARGV[4], 'LIMIT', offset, chunk)
  end
  for _, s in ipairs(starts) do
    local row = redis.call('HMGET', ARGV[1] .. s, unpack(fields))
    if wanted(row, want) then
      out[#out + 1] = s
      out[#out + 1] = row
      found = found + 1
      if found >= n then break end
    end
  end
  if want == 'any' or #starts < chunk then break end
  offset = offset + chunk
end
return out
"""
)

# KEYS[1] the table's window zset, KEYS[2] the checkpoint. ARGV: 1 table prefix, 2 window
# start or `current` (the newest), 3 aggregate, 4 n, 5 desc|asc, 6 want (any|final|open),
# 7 size + allowed lateness ms, 8 k, 9… watermark fields, then fields to read. Returns
# false for an unknown window (or one not as wanted), else {start, {key, score, values,
# …}, watermark or ''}.
_TOP = (
    "local LATE = 0\n"
    + _watermark(8)
    + """
local closes = tonumber(ARGV[7])
local want = ARGV[6]
local start = ARGV[2]
if start == 'current' then
  local newest
  if want == 'final' then
    if W == nil then return false end
    newest = redis.call('ZREVRANGEBYSCORE', KEYS[1], string.format('%d', W - closes), '-inf',
      'LIMIT', 0, 1)
  else
    newest = redis.call('ZREVRANGE', KEYS[1], 0, 0)
  end
  if #newest == 0 then return false end
  start = newest[1]
elseif not redis.call('ZSCORE', KEYS[1], start) then
  return false
end
local final = W ~= nil and tonumber(start) + closes <= W
if (want == 'final' and not final) or (want == 'open' and final) then return false end
local top = ARGV[1] .. ':top:' .. start .. ':' .. ARGV[3]
local n = tonumber(ARGV[4])
local ranked
if ARGV[5] == 'desc' then
  ranked = redis.call('ZREVRANGE', top, 0, n - 1, 'WITHSCORES')
else
  ranked = redis.call('ZRANGE', top, 0, n - 1, 'WITHSCORES')
end
local out = {}
for i = 1, #ranked, 2 do
  out[#out + 1] = ranked[i]
  out[#out + 1] = ranked[i + 1]
  out[#out + 1] = redis.call('HMGET', ARGV[1] .. ':w:' .. ranked[i] .. ':' .. start,
    unpack(fields))
end
return {start, out, W and string.format('%d', W) or ''}
"""
)

SESSION_SCAN = 10_000
"""Most sessions one listing of a table's sessions looks at (the most recently ended)."""

# KEYS[1] the session zset (`{start}:{key}` by end), KEYS[2] the checkpoint. ARGV: 1 table
# prefix, 2 mode (recent|desc|asc: ranked), 3 n, 4 want, 5 allowed lateness ms, 6 earliest end or
# '-inf', 7 index of the ranked field among those read (top), 8 k, 9… watermark fields,
# then fields to read. Sessions are walked from the most recent end, at most SCAN of them.
# Returns {watermark or '', {key, start, values, …}}.
_SESSIONS = (
    f"local LATE, SCAN = tonumber(ARGV[5]), {SESSION_SCAN}\n"
    + _watermark(8)
    + """
local mode, n, want = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local cands, scanned, offset, chunk = {}, 0, 0, 256
while true do
  local members = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', ARGV[6], 'LIMIT', offset, chunk)
  for _, m in ipairs(members) do
    local c = string.find(m, ':', 1, true)
    local start, key = string.sub(m, 1, c - 1), string.sub(m, c + 1)
    local row = redis.call('HMGET', ARGV[1] .. ':w:' .. key .. ':' .. start, unpack(fields))
    if row[1] and wanted(row, want) then cands[#cands + 1] = {key, start, row} end
    if mode == 'recent' and #cands >= n then break end
  end
  scanned = scanned + #members
  if #members < chunk or (mode == 'recent' and #cands >= n) or scanned >= SCAN then break end
  offset = offset + chunk
end
if mode ~= 'recent' then
  local bi = tonumber(ARGV[7])
  local ranked = {}
  for _, c in ipairs(cands) do
    if c[3][bi] then c[4] = tonumber(c[3][bi]) ranked[#ranked + 1] = c end
  end
  table.sort(ranked, function(a, b)
    if a[4] ~= b[4] then
      if mode == 'desc' then return a[4] > b[4] end
      return a[4] < b[4]
    end
    if a[1] ~= b[1] then return a[1] < b[1] end
    return tonumber(a[2]) < tonumber(b[2])
  end)
  cands = ranked
end
local out = {}
for i = 1, math.min(n, #cands) do
  out[#out + 1] = cands[i][1]
  out[#out + 1] = cands[i][2]
  out[#out + 1] = cands[i][3]
end
return {W and string.format('%d', W) or '', out}
"""
)


# KEYS[1] updated zset, KEYS[2] latest hash. ARGV: 1 offset, 2 limit.
# Returns {total, key, score, body, …}.
_ENTRIES = """
local out = {redis.call('ZCARD', KEYS[1])}
local offset, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local keys = redis.call('ZREVRANGE', KEYS[1], offset, offset + limit - 1, 'WITHSCORES')
for i = 1, #keys, 2 do
  out[#out + 1] = keys[i]
  out[#out + 1] = keys[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], keys[i]) or ''
end
return out
"""

# KEYS[1] geo set, KEYS[2] latest hash, KEYS[3] updated zset. ARGV: 1 centre lon,
# 2 centre lat, 3 box|all, 4 width m, 5 height m, 6 min lon, 7 min lat, 8 max lon,
# 9 max lat, 10 limit. Redis' box is measured in metres around the centre, so it is
# searched slightly larger and the exact lat/lon box is applied here.
_WITHIN = """
local found
if ARGV[3] == 'box' then
  found = redis.call('GEOSEARCH', KEYS[1], 'FROMLONLAT', ARGV[1], ARGV[2],
    'BYBOX', ARGV[4], ARGV[5], 'm', 'ASC', 'WITHCOORD')
else
  found = redis.call('GEOSEARCH', KEYS[1], 'FROMLONLAT', ARGV[1], ARGV[2],
    'BYRADIUS', 20100, 'km', 'ASC', 'WITHCOORD')
end
local minlon, minlat = tonumber(ARGV[6]), tonumber(ARGV[7])
local maxlon, maxlat = tonumber(ARGV[8]), tonumber(ARGV[9])
local limit, matched, out = tonumber(ARGV[10]), 0, {}
for _, item in ipairs(found) do
  local lon, lat = tonumber(item[2][1]), tonumber(item[2][2])
  if lon >= minlon and lon <= maxlon and lat >= minlat and lat <= maxlat then
    matched = matched + 1
    if matched <= limit then
      out[#out + 1] = item[1]
      out[#out + 1] = item[2][1]
      out[#out + 1] = item[2][2]
      out[#out + 1] = redis.call('HGET', KEYS[2], item[1]) or ''
      out[#out + 1] = redis.call('ZSCORE', KEYS[3], item[1]) or ''
    end
  end
end
return {matched, out}
"""

EARTH_RADIUS_M = 6372797.560856
"""The radius Redis' geo commands use, so our box matches theirs."""
GEO_MAX_LAT = 85.05112878


STATUS_CACHE_S = 1.0
"""How long a table's status hash is served from memory: a rebuild lasts seconds at least,
and reading it on every request would double the hottest routes' round trips."""


Want = str
"""Which windows a read keeps: `any`, `final` or `open`."""


KeyWindows = tuple[bool, list[dict[str, Any]]]
"""A key_windows answer: whether the key exists, its windows oldest first."""
TopKeys = tuple[int, int | None, list[dict[str, Any]]]
"""top()'s answer: window start, watermark, ranked keys."""


def _top_request(
    start: int | None, by: str, n: int, order: str, want: Want
) -> tuple[str, tuple[int | None, str, int, str, Want]]:
    """top()'s request among a table's kept answers: a pair, so it never equals one of
    key_windows' six-tuples."""
    return "top", (start, by, n, order, want)


def want_of(final: bool | None) -> Want:
    return "any" if final is None else ("final" if final else "open")


@functools.cache
def _fields(table: Table) -> tuple[list[str], list[tuple[str, type[int] | type[float]]]]:
    """The hash fields a window read asks for (`end`, then each aggregate, then each
    aggregate's error marker, then a session's `last`) and how each aggregate's text
    becomes a number."""
    convert = [(a.name, int if a.op in INTEGER_OPS else float) for a in table.aggregates]
    errors = [serving.error_field(name) for name, _ in convert]
    last = ["last"] if table.is_session else []
    return ["end", *(name for name, _ in convert), *errors, *last], convert


@functools.lru_cache(maxsize=4096)
def _changes_channel(pipeline: str, table: str) -> str:
    """serving.changes_channel, formatted once per table rather than once per request."""
    return serving.changes_channel(pipeline, table)


def _watermark_args(table: Table) -> list[Any]:
    return [len(table.watermark_fields), *table.watermark_fields]


def parse_watermark(raw: str | None) -> int | None:
    return None if raw is None or raw == "" else int(raw)


def is_final(table: Table, end: int, watermark: int | None) -> bool:
    """Whether a window ending at `end` is final at `watermark` (as the scripts decide)."""
    return watermark is not None and end + (table.allowed_lateness_ms or 0) <= watermark


def window_values(table: Table, row: list[str | None]) -> tuple[int | None, dict[str, Any]]:
    """The `end` and typed aggregate values of an HMGET of `_fields(table)`; `end` is None
    when the hash is gone (expired, or dropped by retention since it was indexed)."""
    _, convert = _fields(table)
    values = {
        name: None if v is None else conv(v)
        for (name, conv), v in zip(convert, row[1 : 1 + len(convert)], strict=True)
    }
    end = row[0]
    return (None if end is None else int(end)), values


def window_errors(table: Table, row: list[str | None]) -> dict[str, str]:
    """Aggregate -> why its value is not stored (the `_error:` markers), for the aggregates
    of an HMGET of `_fields(table)` that have one."""
    _, convert = _fields(table)
    n = len(convert)
    marks = row[1 + n : 1 + 2 * n]
    return {name: mark for (name, _), mark in zip(convert, marks, strict=True) if mark is not None}


def window_dict(
    table: Table, key: str, start: int, row: list[str | None], watermark: int | None
) -> dict[str, Any]:
    end, values = window_values(table, row)
    end = end or start + (table.window_size_ms or 0)
    out: dict[str, Any] = {"key": key, "start": start, "end": end}
    if table.is_session:
        last = row[-1]
        out["last_event"] = None if last is None else int(last)
    out["final"] = is_final(table, end, watermark)
    out["watermark"] = watermark
    out["values"] = values
    errors = window_errors(table, row)
    if errors:
        # The marked aggregates have no value (null above), for good; the others are exact.
        out["errors"] = errors
    return out


def decode_event(body: str) -> dict[str, Any]:
    value = orjson.loads(body)
    return value if isinstance(value, dict) else {"value": value}


def _hash(raw: Any) -> dict[str, str]:
    """An HGETALL reply (RESP2: a flat list; RESP3: a map) as a dict."""
    if isinstance(raw, dict):
        return dict(raw)
    return {raw[i]: raw[i + 1] for i in range(0, len(raw), 2)}


def _score(raw: str | None) -> int | None:
    return None if raw is None or raw == "" else int(float(raw))


class TableStore:
    """Reads of every table through one client (one connection pool)."""

    def __init__(self, redis: RedisPool, tables: Iterable[Table] = ()) -> None:
        self.redis = redis
        self.versions = VersionWatch(
            redis,
            [serving.changes_channel(t.pipeline, t.name) for t in tables if t.kind == "window"],
        )
        """Key-window answers kept while their table is unwritten (flowmill_api.versions)."""
        self._key_windows = redis.script(_KEY_WINDOWS)
        self._top = redis.script(_TOP)
        self._entries = redis.script(_ENTRIES)
        self._within = redis.script(_WITHIN)
        self._sessions = redis.script(_SESSIONS)
        self._status: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}
        self._status_reads: dict[tuple[str, str], asyncio.Task[dict[str, str]]] = {}
        self._window_reads: dict[
            tuple[str, Any], tuple[tuple[int, int], asyncio.Future[KeyWindows]]
        ] = {}
        """key_windows' reads in flight: (channel, request) -> (token sent under, the read)."""

    async def ping(self) -> bool:
        return bool(await self.redis.execute("PING") == "PONG")

    async def status(self, table: Table) -> dict[str, str]:
        """The table's status hash (serving.status_key), at most STATUS_CACHE_S old; an
        exact table's is empty. Concurrent requests share one read."""
        name = (table.pipeline, table.name)
        cached = self._status.get(name)
        if cached is not None and time.monotonic() - cached[0] < STATUS_CACHE_S:
            return cached[1]
        task = self._status_reads.get(name)
        if task is None:
            task = asyncio.ensure_future(self._read_status(table))
            self._status_reads[name] = task
            task.add_done_callback(lambda _: self._status_reads.pop(name, None))
        # Shielded: one request giving up must not cancel the read the others wait for.
        return await asyncio.shield(task)

    def status_kept(self, table: Table) -> object | None:
        """The status entry status() would answer from without a read (the same object
        until read again), or None."""
        cached = self._status.get((table.pipeline, table.name))
        if cached is not None and time.monotonic() - cached[0] < STATUS_CACHE_S:
            return cached
        return None

    def key_windows_kept(
        self, table: Table, key: str, *, last: int, want: Want = "any"
    ) -> object | None:
        """The kept entry key_windows(table, key, last=..., want=...) would answer from
        without a read (the same object until dropped or read again), or None."""
        channel = _changes_channel(table.pipeline, table.name)
        return self.versions.entry(channel, (key, last, None, None, 1, want))

    async def statuses(self, tables: list[Table]) -> list[dict[str, str]]:
        """The status hashes of several tables in one round trip (the catalog), uncached."""
        if not tables:
            return []
        raw = await self.redis.execute_many(
            *(("HGETALL", serving.status_key(t.pipeline, t.name)) for t in tables)
        )
        return [_hash(r) for r in raw]

    async def _read_status(self, table: Table) -> dict[str, str]:
        started = time.monotonic()
        raw = await self.redis.execute("HGETALL", serving.status_key(table.pipeline, table.name))
        status = _hash(raw)
        self._status[(table.pipeline, table.name)] = (started, status)
        return status

    # -- window tables ----------------------------------------------------------------

    async def key_windows(
        self,
        table: Table,
        key: str,
        *,
        last: int | None = None,
        start: int | None = None,
        end: int | None = None,
        limit: int = 1,
        want: Want = "any",
    ) -> tuple[bool, list[dict[str, Any]]]:
        """(key exists, windows oldest first): the newest `last`, or those starting in
        [start, end] (at most `limit`); `want` keeps only final or only open ones."""
        channel = _changes_channel(table.pipeline, table.name)
        request = (key, last, start, end, limit, want)
        kept: KeyWindows | None = self.versions.get(channel, request)
        if kept is None:
            # Concurrent misses of one request share one read (a hot key's answer dropped
            # by a write or by age is asked for by every connection at once), but only
            # while no write was announced since that read was sent: the token says so.
            token = self.versions.token(channel)
            flight = (channel, request)
            shared = self._window_reads.get(flight)
            if shared is not None and shared[0] == token:
                task = shared[1]
            else:
                task = asyncio.ensure_future(
                    self._read_key_windows(table, key, channel, request, token)
                )
                self._window_reads[flight] = (token, task)
                task.add_done_callback(functools.partial(self._read_done, flight))
            # Shielded: one request giving up must not cancel the read the others wait for.
            kept = await asyncio.shield(task)
        # Copies: callers add to a window (its `state`) or pop from the list.
        return kept[0], [dict(w) for w in kept[1]]

    def _read_done(self, flight: tuple[str, Any], task: asyncio.Future[KeyWindows]) -> None:
        shared = self._window_reads.get(flight)
        if shared is not None and shared[1] is task:
            del self._window_reads[flight]

    async def _read_key_windows(
        self, table: Table, key: str, channel: str, request: Any, token: tuple[int, int]
    ) -> KeyWindows:
        """One read of key_windows' `request`, sent under `token`, kept if it still holds."""
        _, last, start, end, limit, want = request
        read_at = time.monotonic()
        args: list[Any] = [f"{table.prefix}:w:{key}:"]
        if last is not None:
            args += ["last", 0, 0, last]
        else:
            lo = "-inf" if start is None else start
            hi = "+inf" if end is None else end
            args += ["range", lo, hi, limit]
        args += [want, table.allowed_lateness_ms or 0, *_watermark_args(table)]
        args += _fields(table)[0]
        raw = await self._key_windows(
            keys=[serving.window_index_key(table.pipeline, table.name, key), table.checkpoint],
            args=args,
        )
        exists = int(raw[0]) > 0
        watermark = parse_watermark(raw[1])
        windows = []
        for i in range(2, len(raw), 2):
            if raw[i + 1][0] is not None:  # an expired hash whose index outlived it
                windows.append(window_dict(table, key, int(raw[i]), raw[i + 1], watermark))
        windows.sort(key=lambda w: w["start"])
        self.versions.put(channel, request, token, read_at, (exists, windows))
        return exists, windows

    async def watermark(self, table: Table) -> int | None:
        """The table's watermark: the smallest of its input partitions', None while one
        has none."""
        if not table.watermark_fields:
            return None
        raw = await self.redis.execute("HMGET", table.checkpoint, *table.watermark_fields)
        if any(v is None for v in raw):
            return None
        return min(int(float(v)) for v in raw)

    async def sessions(
        self,
        table: Table,
        mode: str,
        n: int,
        want: Want,
        since: int | None = None,
        by: str | None = None,
    ) -> tuple[int | None, list[dict[str, Any]]]:
        """(watermark, sessions of any key): the most recently ended (`mode` recent), or
        ranked by the aggregate `by` (`mode` desc|asc) among those ending at or after
        `since`."""
        fields = _fields(table)[0]
        by_index = fields.index(by) + 1 if by else 0
        raw = await self._sessions(
            keys=[serving.sessions_key(table.pipeline, table.name), table.checkpoint],
            args=[
                table.prefix,
                mode,
                n,
                want,
                table.allowed_lateness_ms or 0,
                "-inf" if since is None else since,
                by_index,
                *_watermark_args(table),
                *fields,
            ],
        )
        watermark = parse_watermark(raw[0])
        flat = raw[1]
        return watermark, [
            window_dict(table, flat[i], int(flat[i + 1]), flat[i + 2], watermark)
            for i in range(0, len(flat), 3)
        ]

    async def table_windows(
        self, table: Table, start: int | None, end: int | None, limit: int
    ) -> list[int]:
        """Window starts of the table in [start, end], newest first."""
        raw = await self.redis.execute(
            "ZREVRANGEBYSCORE",
            serving.windows_key(table.pipeline, table.name),
            "+inf" if end is None else end,
            "-inf" if start is None else start,
            "LIMIT",
            0,
            limit,
        )
        return [int(s) for s in raw]

    async def newest_window(self, table: Table) -> int | None:
        raw = await self.redis.execute(
            "ZREVRANGE", serving.windows_key(table.pipeline, table.name), 0, 0
        )
        return int(raw[0]) if raw else None

    async def keys_since(self, table: Table, since: int, limit: int) -> list[str]:
        """Keys whose newest window starts at or after `since`."""
        return cast(
            list[str],
            await self.redis.execute(
                "ZRANGEBYSCORE",
                serving.keys_key(table.pipeline, table.name),
                since,
                "+inf",
                "LIMIT",
                0,
                limit,
            ),
        )

    async def top(
        self, table: Table, start: int | None, by: str, n: int, order: str, want: Want = "any"
    ) -> TopKeys | None:
        """(window start, watermark, its keys ranked by one aggregate with all their
        values); None when the table has no such window (or none as wanted). `start`
        None means the newest window (the newest final one with want `final`).

        Kept in memory while the table is unwritten, as key_windows' answers are
        (flowmill_api.versions): everything the script reads (the table's windows, its
        top sets, the windows' hashes, the checkpoint's watermark) is written by the
        window script of a batch that announces itself, and what expires by TTL is
        bounded by versions.MAX_AGE_S. The answer kept is shared: callers must not change
        it."""
        channel = _changes_channel(table.pipeline, table.name)
        request = _top_request(start, by, n, order, want)
        kept: TopKeys | None = self.versions.get(channel, request)
        if kept is not None:
            return kept
        token = self.versions.token(channel)
        read_at = time.monotonic()
        found = await self._read_top(table, start, by, n, order, want)
        if found is not None:  # "no such window" is not kept: get() says None for a miss
            self.versions.put(channel, request, token, read_at, found)
        return found

    def top_kept(
        self, table: Table, start: int | None, by: str, n: int, order: str, want: Want = "any"
    ) -> object | None:
        """The kept entry top(...) would answer from without a read (the same object
        until dropped or read again), or None."""
        channel = _changes_channel(table.pipeline, table.name)
        return self.versions.entry(channel, _top_request(start, by, n, order, want))

    async def _read_top(
        self, table: Table, start: int | None, by: str, n: int, order: str, want: Want
    ) -> TopKeys | None:
        closes = (table.window_size_ms or 0) + (table.allowed_lateness_ms or 0)
        raw = await self._top(
            keys=[serving.windows_key(table.pipeline, table.name), table.checkpoint],
            args=[
                table.prefix,
                "current" if start is None else start,
                by,
                n,
                order,
                want,
                closes,
                *_watermark_args(table),
                *_fields(table)[0],
            ],
        )
        if raw is None:
            return None
        found, flat, watermark = int(raw[0]), raw[1], parse_watermark(raw[2])
        out: list[dict[str, Any]] = []
        for i in range(0, len(flat), 3):
            key, score, row = flat[i], flat[i + 1], flat[i + 2]
            end, values = window_values(table, row)
            if end is None:
                continue  # expired or dropped by retention since it was ranked
            value = values.get(by)
            ranked: dict[str, Any] = {
                "rank": len(out) + 1,
                "key": key,
                "score": float(score) if value is None else value,
                "values": values,
            }
            errors = window_errors(table, row)
            if errors:
                ranked["errors"] = errors
            out.append(ranked)
        return found, watermark, out

    async def keys(self, table: Table, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """(total, keys most recently active first)."""
        name = serving.keys_key(table.pipeline, table.name)
        total, flat = await self.redis.execute_many(
            ("ZCARD", name), ("ZREVRANGE", name, offset, offset + limit - 1, "WITHSCORES")
        )
        return int(total), [
            {"key": flat[i], "latest_start": int(float(flat[i + 1]))}
            for i in range(0, len(flat), 2)
        ]

    # -- latest-state tables ----------------------------------------------------------

    async def entry(self, table: Table, key: str) -> dict[str, Any] | None:
        p = table.pipeline
        body, score = await self.redis.execute_many(
            ("HGET", serving.latest_key(p, table.name), key),
            ("ZSCORE", serving.updated_key(p, table.name), key),
        )
        if body is None:
            return None
        return {"key": key, "updated": _score(score), "value": decode_event(body)}

    async def entries(
        self, table: Table, offset: int, limit: int
    ) -> tuple[int, list[dict[str, Any]]]:
        p = table.pipeline
        raw = await self._entries(
            keys=[serving.updated_key(p, table.name), serving.latest_key(p, table.name)],
            args=[offset, limit],
        )
        out = []
        for i in range(1, len(raw), 3):
            if raw[i + 2]:
                out.append(
                    {
                        "key": raw[i],
                        "updated": _score(raw[i + 1]),
                        "value": decode_event(raw[i + 2]),
                    }
                )
        return int(raw[0]), out

    async def updated_since(self, table: Table, since_ms: int, limit: int) -> list[dict[str, Any]]:
        """Entries updated at or after `since_ms`, oldest first (live-stream replay)."""
        p = table.pipeline
        keys = await self.redis.execute(
            "ZRANGEBYSCORE", serving.updated_key(p, table.name), since_ms, "+inf", "LIMIT", 0, limit
        )
        if not keys:
            return []
        bodies, scores = await self.redis.execute_many(
            ("HMGET", serving.latest_key(p, table.name), *keys),
            ("ZMSCORE", serving.updated_key(p, table.name), *keys),
        )
        return [
            {"key": k, "updated": _score(s), "value": decode_event(b)}
            for k, b, s in zip(keys, bodies, scores, strict=True)
            if b
        ]

    async def within(
        self,
        table: Table,
        min_lat: float,
        min_lon: float,
        max_lat: float,
        max_lon: float,
        limit: int,
    ) -> tuple[int, list[dict[str, Any]]]:
        """(matched, entries inside the box nearest its centre first, at most `limit`)."""
        p = table.pipeline
        c_lat = (min(max_lat, GEO_MAX_LAT) + max(min_lat, -GEO_MAX_LAT)) / 2
        c_lon = (min_lon + max_lon) / 2
        half_lon = (max_lon - min_lon) / 2
        if half_lon <= 90:
            # Redis measures a member's east-west distance at the member's own latitude,
            # which is widest nearest the equator.
            lat_eq = 0.0 if min_lat <= 0 <= max_lat else min(abs(min_lat), abs(max_lat))
            width = 2 * _distance_m(lat_eq, c_lon - half_lon, lat_eq, c_lon) * 1.001 + 2
            half_lat = max(c_lat - min_lat, max_lat - c_lat)
            height = 2 * EARTH_RADIUS_M * math.radians(half_lat) * 1.001 + 2
            mode = "box"
        else:
            # A box wider than a hemisphere is no box to Redis: scan every position.
            width = height = 0.0
            mode = "all"
        raw = await self._within(
            keys=[
                serving.geo_key(p, table.name),
                serving.latest_key(p, table.name),
                serving.updated_key(p, table.name),
            ],
            args=[c_lon, c_lat, mode, width, height, min_lon, min_lat, max_lon, max_lat, limit],
        )
        matched, flat = int(raw[0]), raw[1]
        out = []
        for i in range(0, len(flat), 5):
            key, lon, lat, body, score = flat[i : i + 5]
            out.append(
                {
                    "key": key,
                    "lat": float(lat),
                    "lon": float(lon),
                    "updated": _score(score),
                    "value": decode_event(body) if body else {},
                }
            )
        return matched, out


def _distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance, as Redis computes it."""
    la1, la2 = math.radians(lat1), math.radians(lat2)
    u = math.sin((la2 - la1) / 2)
    v = math.sin(math.radians(lon2 - lon1) / 2)
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(u * u + math.cos(la1) * math.cos(la2) * v * v))
