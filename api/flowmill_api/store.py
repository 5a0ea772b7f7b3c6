"""Reads of the serving tables (layout in flowmill.serving), one Redis round trip each.

Nothing is cached: a window is read from Redis on every request, so a value is never
older than the last batch a worker applied. What would otherwise take several dependent
round trips (find a key's newest window, then read it; rank a window's keys, then read
each) runs as one read-only Lua script, and independent reads go in one pipeline.
"""

from __future__ import annotations

import functools
import math
from typing import Any, cast

import orjson

from flowmill import serving
from flowmill_api.catalog import INTEGER_OPS, Table
from flowmill_api.redis_pool import RedisPool

# KEYS[1] the key's window index. ARGV: 1 window hash prefix (…:w:{key}:), 2 mode
# (`last`: the newest ARGV[5]; `range`: scores ARGV[3]..ARGV[4], at most ARGV[5]),
# 6… the fields to read (`end`, then the aggregates; internal partials are never read).
# Returns {index size, start, values, start, values, …}.
_KEY_WINDOWS = """
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
local starts
if ARGV[2] == 'last' then
  starts = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[5]) - 1)
else
  starts = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[3], ARGV[4], 'LIMIT', 0, tonumber(ARGV[5]))
end
local out = {redis.call('ZCARD', KEYS[1])}
for _, s in ipairs(starts) do
  out[#out + 1] = s
  out[#out + 1] = redis.call('HMGET', ARGV[1] .. s, unpack(fields))
end
return out
"""

# KEYS[1] the table's window zset. ARGV: 1 table prefix, 2 window start or `current`
# (the newest), 3 aggregate, 4 n, 5 desc|asc, 6… fields to read. Returns false for an
# unknown window, else {start, {key, score, values, …}}.
_TOP = """
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
local start = ARGV[2]
if start == 'current' then
  local newest = redis.call('ZREVRANGE', KEYS[1], 0, 0)
  if #newest == 0 then return false end
  start = newest[1]
elseif not redis.call('ZSCORE', KEYS[1], start) then
  return false
end
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
return {start, out}
"""

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


@functools.cache
def _fields(table: Table) -> tuple[list[str], list[tuple[str, type[int] | type[float]]]]:
    """The hash fields a window read asks for (`end`, then each aggregate) and how each
    aggregate's text becomes a number."""
    convert = [(a.name, int if a.op in INTEGER_OPS else float) for a in table.aggregates]
    return ["end", *(name for name, _ in convert)], convert


def window_values(table: Table, row: list[str | None]) -> tuple[int | None, dict[str, Any]]:
    """The `end` and typed aggregate values of an HMGET of `_fields(table)`; `end` is None
    when the hash is gone (expired, or dropped by retention since it was indexed)."""
    _, convert = _fields(table)
    values = {
        name: None if v is None else conv(v)
        for (name, conv), v in zip(convert, row[1:], strict=True)
    }
    end = row[0]
    return (None if end is None else int(end)), values


def window_dict(table: Table, key: str, start: int, row: list[str | None]) -> dict[str, Any]:
    end, values = window_values(table, row)
    size = table.window_size_ms or 0
    return {"key": key, "start": start, "end": end or start + size, "values": values}


def decode_event(body: str) -> dict[str, Any]:
    value = orjson.loads(body)
    return value if isinstance(value, dict) else {"value": value}


def _score(raw: str | None) -> int | None:
    return None if raw is None or raw == "" else int(float(raw))


class TableStore:
    """Reads of every table through one client (one connection pool)."""

    def __init__(self, redis: RedisPool) -> None:
        self.redis = redis
        self._key_windows = redis.script(_KEY_WINDOWS)
        self._top = redis.script(_TOP)
        self._entries = redis.script(_ENTRIES)
        self._within = redis.script(_WITHIN)

    async def ping(self) -> bool:
        return bool(await self.redis.execute("PING") == "PONG")

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
    ) -> tuple[bool, list[dict[str, Any]]]:
        """(key exists, windows oldest first): the newest `last`, or those starting in
        [start, end] (at most `limit`)."""
        p = table.pipeline
        args: list[Any] = [f"{table.prefix}:w:{key}:"]
        if last is not None:
            args += ["last", 0, 0, last]
        else:
            lo = "-inf" if start is None else start
            hi = "+inf" if end is None else end
            args += ["range", lo, hi, limit]
        args += _fields(table)[0]
        raw = await self._key_windows(
            keys=[serving.window_index_key(p, table.name, key)], args=args
        )
        exists = int(raw[0]) > 0
        windows = []
        for i in range(1, len(raw), 2):
            if raw[i + 1][0] is not None:  # an expired hash whose index outlived it
                windows.append(window_dict(table, key, int(raw[i]), raw[i + 1]))
        windows.sort(key=lambda w: w["start"])
        return exists, windows

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
        self, table: Table, start: int | None, by: str, n: int, order: str
    ) -> tuple[int, list[dict[str, Any]]] | None:
        """(window start, its keys ranked by one aggregate with all their values); None
        when the table has no such window. `start` None means the newest window."""
        raw = await self._top(
            keys=[serving.windows_key(table.pipeline, table.name)],
            args=[
                table.prefix,
                "current" if start is None else start,
                by,
                n,
                order,
                *_fields(table)[0],
            ],
        )
        if raw is None:
            return None
        found, flat = int(raw[0]), raw[1]
        out: list[dict[str, Any]] = []
        for i in range(0, len(flat), 3):
            key, score, row = flat[i], flat[i + 1], flat[i + 2]
            end, values = window_values(table, row)
            if end is None:
                continue  # expired or dropped by retention since it was ranked
            value = values.get(by)
            out.append(
                {
                    "rank": len(out) + 1,
                    "key": key,
                    "score": float(score) if value is None else value,
                    "values": values,
                }
            )
        return found, out

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
