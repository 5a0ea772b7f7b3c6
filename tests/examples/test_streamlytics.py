"""Streamlytics end to end: replay the example's watch logs through `flowmill run`, and
check each show's daily windows and the viewing sessions (binges) served by the API
against values computed here from the CSV file with plain Python (the same formulas as
the manifest's CEL expressions, and sessions found by sorting each user's views)."""

from __future__ import annotations

import csv
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from tests.examples.harness import (
    api,
    example_copy,
    key_path,
    local_run,
    row,
    source,
    table_path,
    wait_consumed,
    wait_done,
    wait_matching,
)

DAY_MS = 86_400_000
GAP_MS = 30 * 60_000


def number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def watch_events(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The valid rows (the manifest's schema, spelt out) and the number of invalid ones."""
    valid, invalid = [], 0
    with path.open(newline="") as handle:
        for r in csv.DictReader(handle):
            length, watched = number(r["show_length_minutes"]), number(r["watch_duration_minutes"])
            if (
                not r["user_id"]
                or not r["show_name"]
                or not r["watch_date"]
                or length is None
                or length <= 0
                or watched is None
                or watched < 0
            ):
                invalid += 1
                continue
            valid.append({**r, "length": length, "watched": watched})
    return valid, invalid


def expected_days(events: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    days: dict[tuple[str, int], dict[str, Any]] = defaultdict(
        lambda: {"views": 0, "users": set(), "minutes": 0.0, "completion": 0.0,
                 "engagement": 0.0}
    )  # fmt: skip
    for e in events:
        completion = min(1.0, e["watched"] / e["length"])
        binge = e["watched"] >= 120.0
        engagement = 100.0 * (0.7 * completion + (0.3 if binge else 0.0))
        ts = int(datetime.fromisoformat(e["watch_date"]).timestamp() * 1000)
        d = days[(e["show_name"], ts - ts % DAY_MS)]
        d["views"] += 1
        d["users"].add(e["user_id"])
        d["minutes"] += e["watched"]
        d["completion"] += completion
        d["engagement"] += engagement
    return {
        key: {
            "views": d["views"],
            "viewers": len(d["users"]),
            "minutes_watched": d["minutes"],
            "avg_completion_rate": d["completion"] / d["views"],
            "avg_engagement_score": d["engagement"] / d["views"],
        }
        for key, d in days.items()
    }


def ms(iso_time: str) -> int:
    return int(datetime.fromisoformat(iso_time).timestamp() * 1000)


def expected_sittings(events: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    """(user:show, start) -> episodes, minutes and the end of the last view: one user's
    views of one show in time order, a sitting going on while the next view starts less
    than 30 minutes after the latest end of a view in it."""
    views: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    for e in events:
        start = ms(e["watch_date"])
        views[f"{e['user_id']}:{e['show_name']}"].append(
            (start, start + int(e["watched"] * 60.0 * 1000), e["watched"])
        )
    out: dict[Any, dict[str, Any]] = {}
    for key, vs in views.items():
        vs.sort()
        runs: list[list[tuple[int, int, float]]] = []
        until = 0
        for v in vs:
            if runs and v[0] - until < GAP_MS:
                runs[-1].append(v)
            else:
                runs.append([v])
                until = v[1]
            until = max(until, v[1])
        for run in runs:
            out[(key, run[0][0])] = {
                "episodes": len(run),
                "minutes_watched": sum(v[2] for v in run),
                "last_event": max(v[1] for v in run),
            }
    return out


def test_streamlytics_per_show_daily_windows(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    def faster(doc: dict[str, Any]) -> None:
        source(doc, "watch-logs")["fileReplay"]["rate"] = 2000

    manifest = example_copy("streamlytics", tmp_path, faster)
    events, invalid = watch_events(tmp_path / "data" / "streamlytics" / "watch_logs.csv")
    assert (len(events), invalid) == (2000, 6)
    expected = expected_days(events)
    sittings = expected_sittings(events)
    binges = {k: v for k, v in sittings.items() if v["episodes"] >= 3}
    assert len(binges) >= 20, "the generator should make binges"

    with local_run(manifest, kafka_broker, redis_server, tmp_path / "run") as run:
        wait_done(run, ["watch-logs"])
        wait_consumed(run, "by-show", len(events))
        assert row(run, "step/enrich").dead == invalid
        assert row(run, "step/by-show").dead == 0  # nothing late: a show's logs stay in order
        wait_consumed(run, "sittings", len(events))
        assert row(run, "step/sittings").dead == 0
        base = table_path(run, "show_daily")
        shows = sorted({show for show, _ in expected})
        with api(run) as http:

            def served() -> dict[Any, dict[str, Any]]:
                found: dict[Any, dict[str, Any]] = {}
                for show in shows:
                    page = http.get(f"{base}/keys/{key_path(show)}/windows")
                    if page.status_code == 200:
                        for w in page.json()["windows"]:
                            found[(show, w["start"])] = w["values"]
                return found

            wait_matching(
                "per-show daily windows",
                served,
                expected,
                exact={"views", "viewers"},
            )
            listed = http.get(f"{base}/keys", params={"limit": 100}).json()
            assert listed["total"] == len(shows)
            assert sorted(k["key"] for k in listed["keys"]) == shows

            sessions = table_path(run, "viewing_sessions")

            def served_binges() -> dict[Any, dict[str, Any]]:
                top = http.get(f"{sessions}/sessions/top", params={"by": "episodes", "n": 1000})
                if top.status_code != 200:
                    return {}
                return {
                    (s["key"], s["start"]): {
                        "episodes": s["values"]["episodes"],
                        "minutes_watched": s["values"]["minutes_watched"],
                        "last_event": s["last_event"],
                    }
                    for s in top.json()["sessions"]
                    if s["values"]["episodes"] >= 3
                }

            wait_matching("binge sessions", served_binges, binges, exact={"episodes", "last_event"})
            # Every sitting of a few viewers, with its final flag at the served watermark.
            for key in sorted({k for k, _ in binges})[:5]:
                page = http.get(f"{sessions}/keys/{key_path(key)}/windows", params={"limit": 1000})
                got = page.json()["windows"]
                want = sorted((st, v) for (k, st), v in sittings.items() if k == key)
                assert [w["start"] for w in got] == [st for st, _ in want]
                for w, (_, v) in zip(got, want, strict=True):
                    assert w["values"]["episodes"] == v["episodes"]
                    assert w["end"] == v["last_event"] + GAP_MS
                    # A partition's watermark is the newest view start it holds.
                    watermark = w["watermark"]
                    assert watermark in {ms(e["watch_date"]) for e in events}
                    assert w["final"] is (v["last_event"] + GAP_MS <= watermark)
