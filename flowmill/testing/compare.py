"""Expected against actual: each mismatch becomes one line of the report, naming the
table, key, window and field (or topic and record), what was expected and what was there.

Values match when every field the test lists is there and equal: numbers within the
tolerance (int and float alike), text and booleans exactly, a mapping field by field (its
other fields not checked), a list item by item. Fields the test leaves out are not checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from flowmill.testing.observe import Record, Window
from flowmill.testing.spec import (
    DeadLetterExpectation,
    RecordExpectation,
    TableExpectation,
    TopicExpectation,
    iso,
)

SHOWN = 5
"""Most unmatched items listed per table or topic; the count says how many more."""

T = TypeVar("T")
E = TypeVar("E")


def mismatches(expected: Any, actual: Any, tolerance: float, path: str = "") -> list[str]:
    """`field: expected X, got Y` for every listed field that differs."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path or 'value'}: expected an object {_show(expected)}, got {_show(actual)}"]
        out = []
        for name, want in expected.items():
            where = f"{path}.{name}" if path else str(name)
            if name not in actual:
                out.append(f"{where}: expected {_show(want)}, missing")
            else:
                out += mismatches(want, actual[name], tolerance, where)
        return out
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path or 'value'}: expected {_show(expected)}, got {_show(actual)}"]
        out = []
        for i, (want, got) in enumerate(zip(expected, actual, strict=True)):
            out += mismatches(want, got, tolerance, f"{path}[{i}]")
        return out
    if _equal(expected, actual, tolerance):
        return []
    return [f"{path or 'value'}: expected {_show(expected)}, got {_show(actual)}"]


def _equal(expected: Any, actual: Any, tolerance: float) -> bool:
    if _is_number(expected) and _is_number(actual):
        return math.isclose(expected, actual, rel_tol=tolerance, abs_tol=tolerance)
    return type(expected) is type(actual) and bool(expected == actual)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{value:.1f}"
    if isinstance(value, str):
        return repr(value)
    text = repr(value) if not isinstance(value, dict | list) else _compact(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _compact(value: Any) -> str:
    import orjson

    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _window_name(key: str, start: int) -> str:
    return f"key {key!r}, window {iso(start)}"


# -- tables -----------------------------------------------------------------------------


def window_table(
    name: str, expected: TableExpectation, windows: list[Window], tolerance: float
) -> list[str]:
    out: list[str] = []
    by_id = {(w.key, w.start): w for w in windows}
    listed = set()
    for want in expected.windows or []:
        ident = (want.key, want.start)
        listed.add(ident)
        got = by_id.get(ident)
        where = f"table {name}, {_window_name(*ident)}"
        if got is None:
            of_key = [iso(w.start) for w in windows if w.key == want.key]
            held = (
                f"key {want.key!r} has windows {', '.join(of_key)}"
                if of_key
                else (f"no window of key {want.key!r}")
            )
            out.append(f"{where}: missing ({held})")
            continue
        problems = mismatches(want.values, got.values, tolerance)
        if want.end is not None and got.end != want.end:
            got_end = "none" if got.end is None else iso(got.end)
            problems.insert(0, f"end: expected {iso(want.end)}, got {got_end}")
        out += [f"{where}: {p}" for p in problems]
    if expected.windows is not None and expected.complete:
        extra = [w for w in windows if (w.key, w.start) not in listed]
        out += _unexpected(
            f"table {name}", extra, lambda w: f"{_window_name(w.key, w.start)} {_compact(w.values)}"
        )
    if expected.count is not None and expected.count != len(windows):
        out.append(f"table {name}: expected {expected.count} windows, got {len(windows)}")
    held_keys = {w.key for w in windows}
    for key in expected.absent:
        if key in held_keys:
            out.append(f"table {name}: key {key!r} should be absent, has windows")
    return out


def latest_table(
    name: str, expected: TableExpectation, entries: dict[str, dict[str, Any]], tolerance: float
) -> list[str]:
    out: list[str] = []
    listed = set()
    for want in expected.entries or []:
        listed.add(want.key)
        got = entries.get(want.key)
        where = f"table {name}, key {want.key!r}"
        if got is None:
            out.append(f"{where}: missing")
            continue
        out += [f"{where}: {p}" for p in mismatches(want.values, got, tolerance)]
    if expected.entries is not None and expected.complete:
        extra = [k for k in entries if k not in listed]
        out += _unexpected(f"table {name}", extra, lambda k: f"key {k!r} {_compact(entries[k])}")
    if expected.count is not None and expected.count != len(entries):
        out.append(f"table {name}: expected {expected.count} keys, got {len(entries)}")
    for key in expected.absent:
        if key in entries:
            out.append(
                f"table {name}: key {key!r} should be absent, holds {_compact(entries[key])}"
            )
    return out


# -- topics -----------------------------------------------------------------------------


def topic(
    name: str, expected: TopicExpectation, records: list[Record], tolerance: float
) -> list[str]:
    out: list[str] = []
    if expected.count is not None and expected.count != len(records):
        out.append(f"topic {name}: expected {expected.count} records, got {len(records)}")
    if expected.records is not None:
        out += _records(
            f"topic {name}", expected.records, records, expected.order, expected.complete, tolerance
        )
    return out


def dead_letters(
    name: str, expected: DeadLetterExpectation, records: list[Record], tolerance: float
) -> list[str]:
    out: list[str] = []
    where = f"dead letters {name}"
    if expected.count is not None and expected.count != len(records):
        out.append(f"{where}: expected {expected.count}, got {len(records)}{_reasons(records)}")
    for want in expected.reasons:
        got = sum(1 for r in records if want.contains in r.reason)
        if got != want.count:
            out.append(
                f"{where}: expected {want.count} with a reason containing {want.contains!r}, "
                f"got {got}{_reasons(records)}"
            )
    if expected.records is not None:
        out += _records(where, expected.records, records, "any", expected.complete, tolerance)
    return out


def _reasons(records: list[Record]) -> str:
    if not records:
        return ""
    counts: dict[str, int] = {}
    for r in records:
        counts[r.reason] = counts.get(r.reason, 0) + 1
    shown = "; ".join(f"{n} x {reason!r}" for reason, n in list(counts.items())[:SHOWN])
    return f" (reasons: {shown})"


def _record_problems(want: RecordExpectation, got: Record, tolerance: float) -> list[str]:
    problems = []
    if want.key is not None and want.key != got.key:
        problems.append(f"key: expected {want.key!r}, got {got.key!r}")
    problems += mismatches(want.value, got.value, tolerance, "value")
    reason = getattr(want, "reason", None)
    if reason is not None and reason not in got.reason:
        problems.append(f"reason: expected to contain {reason!r}, got {got.reason!r}")
    return problems


def _show_record(r: Record) -> str:
    reason = f" reason {r.reason!r}" if r.reason else ""
    return f"key {r.key!r} {_show(r.value)}{reason} (partition {r.partition}, offset {r.offset})"


def _show_expected(want: RecordExpectation) -> str:
    key = f"key {want.key!r} " if want.key is not None else ""
    reason = getattr(want, "reason", None)
    return f"{key}{_compact(want.value)}" + (f" reason containing {reason!r}" if reason else "")


def _records(
    where: str,
    expected: Sequence[RecordExpectation],
    records: list[Record],
    order: str,
    complete: bool,
    tolerance: float,
) -> list[str]:
    def fits(want: RecordExpectation, got: Record) -> bool:
        return not _record_problems(want, got, tolerance)

    if order == "any":
        pairs = _matching(expected, records, fits)
        missing = [want for i, want in enumerate(expected) if i not in pairs]
        used = set(pairs.values())
        extra = [r for j, r in enumerate(records) if j not in used]
        out = [
            f"{where}: missing record {_show_expected(w)}{_nearest(w, extra, tolerance)}"
            for w in missing[:SHOWN]
        ]
        if len(missing) > SHOWN:
            out.append(f"{where}: ... and {len(missing) - SHOWN} more missing records")
        if complete:
            out += _unexpected(where, extra, _show_record, noun="record")
        return out
    if order == "exact":
        return _sequence(where, list(expected), records, complete, tolerance)
    out = []
    keys = list(dict.fromkeys([w.key for w in expected] + [r.key for r in records]))
    for key in keys:
        wanted = [w for w in expected if w.key == key]
        got = [r for r in records if r.key == key]
        if not wanted and not complete:
            continue
        out += _sequence(f"{where}, key {key!r}", wanted, got, complete, tolerance)
    return out


def _sequence(
    where: str, expected: list[Any], records: list[Record], complete: bool, tolerance: float
) -> list[str]:
    """In order: with `complete`, record i must match expected i; without, the expected
    records must appear in order among others (the first fit is taken: for a
    subsequence, the earliest fit never loses a later match)."""
    out = []
    if complete:
        for i, (want, got) in enumerate(zip(expected, records, strict=False)):
            out += [f"{where}, record {i + 1}: {p}" for p in _record_problems(want, got, tolerance)]
        if len(records) > len(expected):
            out += _unexpected(where, records[len(expected) :], _show_record, noun="record")
        for i in range(len(records), len(expected)):
            out.append(f"{where}, record {i + 1}: missing {_show_expected(expected[i])}")
        return out
    j = 0
    for i, want in enumerate(expected):
        while j < len(records) and _record_problems(want, records[j], tolerance):
            j += 1
        if j == len(records):
            out.append(f"{where}, record {i + 1}: {_show_expected(want)} not found in order")
            break
        j += 1
    return out


def _nearest(want: RecordExpectation, candidates: list[Record], tolerance: float) -> str:
    """The closest unmatched record and how it differs, so a wrong value reads as one."""
    if not candidates:
        return ""
    best = min(candidates, key=lambda r: len(_record_problems(want, r, tolerance)))
    problems = _record_problems(want, best, tolerance)
    return f"\n      nearest: {_show_record(best)}\n        " + "\n        ".join(problems)


def _matching(
    expected: Sequence[E], actual: Sequence[T], fits: Callable[[E, T], bool]
) -> dict[int, int]:
    """A largest matching of expected to distinct actual items (augmenting paths): a
    greedy pass could give an early expectation the record a later one needed."""
    options = [[j for j, a in enumerate(actual) if fits(e, a)] for e in expected]
    owner: dict[int, int] = {}

    def place(i: int, seen: set[int]) -> bool:
        for j in options[i]:
            if j in seen:
                continue
            seen.add(j)
            if j not in owner or place(owner[j], seen):
                owner[j] = i
                return True
        return False

    for i in range(len(expected)):
        place(i, set())
    return {i: j for j, i in owner.items()}


def _unexpected(where: str, items: list[T], show: Callable[[T], str], noun: str = "") -> list[str]:
    label = f"unexpected {noun} " if noun else "unexpected "
    out = [f"{where}: {label}{show(item)}" for item in items[:SHOWN]]
    if len(items) > SHOWN:
        out.append(f"{where}: ... and {len(items) - SHOWN} more unexpected")
    return out
