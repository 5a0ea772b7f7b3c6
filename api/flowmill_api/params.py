"""Request parameters: one definition of what a number in a URL is, and the bounds and
defaults of every numeric parameter.

The FastAPI routes document and validate these (their 422s are the only ones); the fast
path accepts exactly what the routes accept and hands anything else to them. Both read an
integer with `parse_integer`: Python's int() also takes `²`, `①`, Arabic-Indic digits,
`+`, `_` and spaces, which made the two paths disagree on what a number is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal, get_args

from fastapi import Path, Query
from pydantic import BeforeValidator

MAX_PAGE = 1000
"""Largest `limit`/`n` of one request: bigger pages are slower than paging."""
MAX_OFFSET = 1_000_000_000
"""Offsets past this are refused (422) rather than handed to Redis as overflowing ranges."""
TIME_BOUND = 2**53
"""Epoch-ms parameters beyond ±2^53 are not times (and not exact in JavaScript)."""
GEO_PAGE = 10_000
"""Largest `limit` of a bounding-box query."""

DEFAULT_COUNT = 10
"""`n` when not given: windows of a key, or top keys of a window."""
DEFAULT_LIMIT = 100
"""`limit` when not given, for every paged listing."""
DEFAULT_GEO_LIMIT = 1000

_INTEGER = re.compile(r"-?[0-9]+")
_MAX_DIGITS = 19
"""Longer texts are out of every bound; refusing them early also keeps int() away from
its 4,300-digit limit."""


def parse_integer(text: str) -> int:
    """ASCII digits with an optional leading minus, nothing else."""
    if _INTEGER.fullmatch(text) is None:
        raise ValueError("must be an integer: ASCII digits with an optional leading '-'")
    if len(text.lstrip("-")) > _MAX_DIGITS:
        raise ValueError("is out of range")
    return int(text)


def _integer_text(value: object) -> object:
    return parse_integer(value) if isinstance(value, str) else value


AsciiInteger = BeforeValidator(_integer_text)
"""Makes FastAPI read an integer parameter with `parse_integer` (bounds still apply)."""


@dataclass(frozen=True, slots=True)
class Bounds:
    """The inclusive range of an integer parameter."""

    low: int
    high: int

    def accept(self, text: str) -> int | None:
        """The value if the route would accept `text`, else None (the route answers)."""
        try:
            value = parse_integer(text)
        except ValueError:
            return None
        return value if self.low <= value <= self.high else None


PAGE = Bounds(1, MAX_PAGE)
OFFSET = Bounds(0, MAX_OFFSET)
EPOCH_MS = Bounds(-TIME_BOUND, TIME_BOUND)

SortOrder = Literal["desc", "asc"]
SORT_ORDERS: tuple[str, ...] = get_args(SortOrder)
DEFAULT_ORDER: SortOrder = "desc"

WindowCount = Annotated[
    int, AsciiInteger, Query(ge=PAGE.low, le=PAGE.high, description="How many windows.")
]
KeyCount = Annotated[
    int, AsciiInteger, Query(ge=PAGE.low, le=PAGE.high, description="How many keys.")
]
Limit = Annotated[
    int, AsciiInteger, Query(ge=PAGE.low, le=PAGE.high, description="Most items returned.")
]
Offset = Annotated[
    int, AsciiInteger, Query(ge=OFFSET.low, le=OFFSET.high, description="Items skipped.")
]
GeoLimit = Annotated[
    int, AsciiInteger, Query(ge=1, le=GEO_PAGE, description="Most positions returned.")
]
WindowStart = Annotated[
    int,
    AsciiInteger,
    Path(ge=EPOCH_MS.low, le=EPOCH_MS.high, description="Window start (ms)."),
]
From = Annotated[
    int | None,
    AsciiInteger,
    Query(alias="from", ge=EPOCH_MS.low, le=EPOCH_MS.high, description="Earliest start (ms)."),
]
To = Annotated[
    int | None,
    AsciiInteger,
    Query(ge=EPOCH_MS.low, le=EPOCH_MS.high, description="Latest start (ms), inclusive."),
]
By = Annotated[
    str | None,
    Query(description="Aggregate to rank by; defaults to the table's first aggregate."),
]
Order = Annotated[SortOrder, Query(description="desc: largest first.")]
Lat = Annotated[float, Query(ge=-90, le=90, description="Degrees.")]
Lon = Annotated[float, Query(ge=-180, le=180, description="Degrees.")]
Final = Annotated[
    bool | None,
    Query(
        description="true: only final windows (the watermark passed end + allowedLateness); "
        "false: only those still open."
    ),
]
Since = Annotated[
    int | None,
    AsciiInteger,
    Query(ge=EPOCH_MS.low, le=EPOCH_MS.high, description="Sessions ending at or after (ms)."),
]
