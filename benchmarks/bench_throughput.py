"""Worker throughput rows of `make bench`: every contender is its own process reading the
same topic from the beginning, contenders alternating over rounds (round r starts at
contender r), each result checked against the windows computed here from the events.

Contenders (benchmarks/contenders/): raw aiokafka and raw confluent-kafka (fetch and
count only: the floors), flowmill's window step (StepRunner with its Redis sink), Quix
Streams (tumbling window, .final()), Bytewax (fold_window), a Faust agent. The peers run
in their own env (scripts/provision.sh bench).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

HERE = Path(__file__).resolve().parent
CONTENDERS = HERE / "contenders"
sys.path.insert(0, str(CONTENDERS))

from _common import MINUTE_MS, window_key  # noqa: E402

PARTITIONS = 4
BASE_MS = 1_763_800_000_000


@dataclass(frozen=True)
class Contender:
    label: str
    script: str
    peers: bool
    """Runs in the peers' env (else flowmill's)."""
    windows: bool
    """Computes windows (else a raw consumer: only the count is checked)."""
    source: Path | None = None
    """A checkout whose flowmill packages the contender imports (else the installed ones):
    `--against REV` runs the window step as of another revision this way."""


CONTENDERS_ALL = [
    Contender("raw aiokafka (fetch only)", "raw_aiokafka.py", False, False),
    Contender("raw confluent-kafka (fetch only)", "raw_confluent.py", True, False),
    Contender("flowmill window step (Redis sink)", "flowmill_step.py", False, True),
    Contender("Quix Streams tumbling .final()", "quix_window.py", True, True),
    Contender("Bytewax fold_window", "bytewax_fold.py", True, True),
    Contender("Faust agent (in memory)", "faust_agent.py", True, True),
]
RAW = CONTENDERS_ALL[0].label
SOURCE_ROOTS = (".", "workers", "api", "operator")
"""Where a checkout keeps flowmill's packages (pyproject.toml's package roots)."""


@dataclass
class Run:
    events_per_s: float
    cpu_us_per_event: float
    peak_rss_mb: float
    ok: bool
    problem: str = ""


@dataclass
class Row:
    contender: Contender
    runs: list[Run] = field(default_factory=list)


def events(n: int, keys: int, seed: int = 1) -> list[tuple[str, bytes, int]]:
    """(key, JSON value, event time ms): trips over `keys` regions, 3 ms apart."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        key = f"r{rng.randrange(keys)}"
        ts = BASE_MS + i * 3
        value = {"trip_id": i, "region_id": key, "fare": round(rng.uniform(3, 60), 2),
                 "event_time": ts}  # fmt: skip
        out.append((key, json.dumps(value).encode(), ts))
    return out


def expected_windows(data: list[tuple[str, bytes, int]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for key, value, ts in data:
        fare = json.loads(value)["fare"]
        acc = out.setdefault(window_key(key, ts - ts % MINUTE_MS), [0, 0.0])
        acc[0] += 1
        acc[1] += fare
    return out


async def produce(
    bootstrap: str, topic: str, data: list[tuple[str, bytes, int]], close: bool = True
) -> tuple[int, int]:
    """The events keyed by region, then (with `close`) one closing event per key two
    windows after the last (peers that emit only closed windows close a key's window on a
    later event of that key). Returns the total and the closing events' window start:
    windows from there on are left out of the checks (open ones are not emitted by every
    contender)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20, acks=1
    )
    await producer.start()
    last = data[-1][2] if data else BASE_MS
    closing = last + 2 * MINUTE_MS
    keys = list(dict.fromkeys(key for key, _, _ in data)) if close else []
    try:
        pending = []
        for key, value, _ in data:
            pending.append(await producer.send(topic, value, key=key.encode()))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        for key in keys:
            value = {"trip_id": -1, "region_id": key, "fare": 0.0, "event_time": closing}
            pending.append(await producer.send(topic, json.dumps(value).encode(), key=key.encode()))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return len(data) + len(keys), closing - closing % MINUTE_MS


def check(
    result: dict[str, Any],
    total: int,
    expected: dict[str, list[float]],
    windows: bool,
    closing: int,
) -> str:
    """'' when the contender computed the right thing, else what is wrong."""
    if result["events"] != total:
        return f"saw {result['events']} of {total} events"
    if result["seconds"] <= 0:
        return "no timing"
    if not windows:
        return ""
    got = {k: v for k, v in (result["windows"] or {}).items() if int(k.rsplit("|", 1)[1]) < closing}
    missing = expected.keys() - got.keys()
    extra = got.keys() - expected.keys()
    if missing or extra:
        return f"{len(missing)} window(s) missing, {len(extra)} unexpected"
    for k, (count, total_fare) in expected.items():
        c, s = got[k]
        if int(c) != count or abs(float(s) - total_fare) > 1e-6 * max(1.0, abs(total_fare)):
            return f"window {k}: {c}, {s} instead of {count}, {total_fare}"
    return ""


def run_contender(
    contender: Contender,
    python: dict[bool, str],
    cfg: dict[str, Any],
    expected: dict[str, list[float]],
    timeout: float,
) -> Run:
    """One process; its timing and peak RSS from itself (wait4's peak when it has none)."""
    argv = [python[contender.peers], str(CONTENDERS / contender.script), json.dumps(cfg)]
    roots = [] if contender.source is None else [contender.source / r for r in SOURCE_ROOTS]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, [*roots, CONTENDERS])))
    out_path = Path(cfg["workdir"]) / f"{cfg['group']}.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                return Run(0, 0, usage.ru_maxrss / 1024, False, f"timed out after {timeout:.0f} s")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = out_path.read_text(errors="replace")
    line = next((ln for ln in text.splitlines() if "BENCH_RESULT " in ln), None)
    rss = usage.ru_maxrss / 1024
    if line is None:
        tail = " | ".join(text.strip().splitlines()[-3:])
        return Run(0, 0, rss, False, f"exit {proc.returncode}, no result: {tail[-300:]}")
    result = json.loads(line.split("BENCH_RESULT ", 1)[1])
    problem = check(result, cfg["total"], expected, contender.windows, cfg["closing"])
    seconds = max(result["seconds"], 1e-9)
    return Run(
        events_per_s=result["events"] / seconds,
        cpu_us_per_event=result["cpu_seconds"] / max(result["events"], 1) * 1e6,
        # The timed part's peak (the contender's own reading), else the whole process's.
        peak_rss_mb=result.get("peak_rss_mb") or rss,
        ok=not problem,
        problem=problem,
    )


def measure(
    bootstrap: str,
    redis_url: str,
    create_topic: Any,
    workdir: Path,
    python: dict[bool, str],
    n_events: int,
    keys: int,
    rounds: int,
    contenders: list[Contender],
    log: Any,
) -> tuple[list[Row], dict[str, Any]]:
    topic = f"bench-{time.time_ns() % 10**9}"
    create_topic(topic, PARTITIONS)
    data = events(n_events, keys)
    expected = expected_windows(data)
    started = time.perf_counter()
    total, closing = asyncio.run(produce(bootstrap, topic, data))
    log(f"produced {total:,} events in {time.perf_counter() - started:.1f} s")
    rows = [Row(c) for c in contenders]
    # Slow peers get time in proportion to the data (Faust does ~10k events/s here).
    timeout = 60 + n_events / 2_000
    for r in range(rounds):
        order = rows[r % len(rows) :] + rows[: r % len(rows)]
        for row in order:
            cfg = {
                "bootstrap": bootstrap,
                "redis_url": redis_url,
                "topic": topic,
                "partitions": PARTITIONS,
                "total": total,
                "closing": closing,
                "group": f"bench-{row.contender.script.split('.')[0]}-{time.time_ns()}",
                "workdir": str(workdir),
            }
            run = run_contender(row.contender, python, cfg, expected, timeout)
            row.runs.append(run)
            log(
                f"round {r + 1}/{rounds} {row.contender.label}: {run.events_per_s:,.0f} ev/s"
                + ("" if run.ok else f" FAILED: {run.problem}")
            )
    meta = {"events": n_events, "keys": keys, "partitions": PARTITIONS, "rounds": rounds,
            "windows": len(expected)}  # fmt: skip
    return rows, meta


def summarize(rows: list[Row]) -> list[dict[str, Any]]:
    """Medians over the runs that passed their check; % of the raw aiokafka median."""
    raw = next((r for r in rows if r.contender.label == RAW), None)
    raw_rate = _median([x.events_per_s for x in raw.runs if x.ok]) if raw else None
    out = []
    for row in rows:
        good = [x for x in row.runs if x.ok]
        rate = _median([x.events_per_s for x in good])
        out.append(
            {
                "contender": row.contender.label,
                "events_per_s": rate,
                "pct_of_raw_aiokafka": (100 * rate / raw_rate) if rate and raw_rate else None,
                "cpu_us_per_event": _median([x.cpu_us_per_event for x in good]),
                "peak_rss_mb": _median([x.peak_rss_mb for x in row.runs]),
                "runs": [round(x.events_per_s) for x in row.runs],
                "checked": f"{len(good)}/{len(row.runs)} correct",
                "problems": sorted({x.problem for x in row.runs if x.problem}),
            }
        )
    return out


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _flush(client: Any) -> None:
    """Empty Redis before a memory reading. ASYNC, then wait for the lazy free: a million
    keys' blocking FLUSHDB outlasted the client's socket timeout and ended a run."""
    client.flushdb(asynchronous=True)
    deadline = time.monotonic() + 300
    while int(client.info("memory").get("lazyfree_pending_objects", 0)) > 0:
        assert time.monotonic() < deadline, "Redis did not free the flushed keys in 300 s"
        time.sleep(0.2)


def memory_per_key(
    bootstrap: str,
    redis_url: str,
    create_topic: Any,
    workdir: Path,
    python: dict[bool, str],
    key_counts: tuple[int, int],
    log: Any,
) -> dict[str, Any]:
    """The flowmill step's peak RSS, and Redis's memory, after the same events (as many as
    the larger key count) over a few keys and over many, each key one open window: the
    difference per key. The event count is the same so that batch sizes, fetch buffers and
    the number of batches in flight are too; only the keys differ. (A window step keeps
    no per-key state between batches: the table lives in Redis, where memory per key goes.)"""
    import redis

    flowmill = next(c for c in CONTENDERS_ALL if c.script == "flowmill_step.py")
    client = redis.Redis.from_url(redis_url)
    events = max(key_counts)
    measured = []
    for keys in key_counts:
        topic = f"mem-{keys}-{time.time_ns() % 10**9}"
        create_topic(topic, PARTITIONS)
        rng = random.Random(keys)
        data = []
        # Every event in one minute's window (BASE_MS itself is 40 s into its minute, so
        # times wrapping back there would be late once the watermark passed its end).
        first = BASE_MS - BASE_MS % MINUTE_MS + MINUTE_MS
        for i in range(events):
            ts = first + i % 50_000
            key = f"k{i % keys}"
            value = {"region_id": key, "fare": round(rng.uniform(3, 60), 2), "event_time": ts}
            data.append((key, json.dumps(value).encode(), ts))
        # No closing events: they would open a second window per key.
        total, closing = asyncio.run(produce(bootstrap, topic, data, close=False))
        _flush(client)
        before = int(client.info("memory")["used_memory"])
        cfg = {"bootstrap": bootstrap, "redis_url": redis_url, "topic": topic,
               "partitions": PARTITIONS, "total": total, "closing": closing, "workdir": str(workdir),
               "group": f"mem-{keys}-{time.time_ns()}"}  # fmt: skip
        run = run_contender(flowmill, python, cfg, expected_windows(data), 120 + events / 2_000)
        redis_bytes = int(client.info("memory")["used_memory"]) - before
        measured.append((keys, run.peak_rss_mb, redis_bytes, run.ok, run.problem))
        log(f"memory: {events:,} events over {keys:,} keys, worker peak RSS "
            f"{run.peak_rss_mb:.0f} MB, Redis +{redis_bytes / 2**20:.0f} MB"
            + ("" if run.ok else f" FAILED: {run.problem}"))  # fmt: skip
    _flush(client)
    client.close()
    (k0, rss0, r0, ok0, _), (k1, rss1, r1, ok1, _) = measured
    return {
        "events": events,
        "keys": [k0, k1],
        "worker_peak_rss_mb": [rss0, rss1],
        "worker_bytes_per_key": (rss1 - rss0) * 2**20 / (k1 - k0),
        "redis_bytes_per_key": (r1 - r0) / (k1 - k0),
        "checked": ok0 and ok1,
        "problems": [m[4] for m in measured if m[4]],
    }


def main() -> int:
    """Some contenders alone (default: the two of flowmill's env, raw aiokafka and the
    window step), on their own Kafka and Redis: what `make bench`'s worker part does,
    without the peers' env, for comparing one change side by side."""
    import argparse

    scripts = scripts_by_name()
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument(
        "--contenders",
        default="raw_aiokafka,flowmill_step",
        help=f"comma-separated, of {','.join(scripts)}",
    )
    parser.add_argument(
        "--against",
        metavar="REV",
        help="also run the window step as of git revision REV (a temporary worktree), "
        "alternating with this checkout's: what the changes since REV bought",
    )
    args = parser.parse_args()
    chosen = [scripts[s] for s in args.contenders.split(",")]
    if args.against:
        return _against(args, chosen)
    return _run(args, chosen)


def _against(args: Any, chosen: list[Contender]) -> int:
    import tempfile

    repo = HERE.parent
    with tempfile.TemporaryDirectory(prefix="flowmill-against-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), args.against],
            check=True,
            capture_output=True,
        )
        try:
            step = scripts_by_name()["flowmill_step"]
            label = f"{step.label} at {args.against}"
            return _run(args, [*chosen, Contender(label, step.script, False, True, tree)])
        finally:
            subprocess.run(
                ["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], check=False
            )


def scripts_by_name() -> dict[str, Contender]:
    return {c.script.removesuffix(".py"): c for c in CONTENDERS_ALL}


def _run(args: Any, chosen: list[Contender]) -> int:
    from flowmill.local.kafka import EmbeddedKafka
    from flowmill.local.redis import EmbeddedRedis

    peers = Path(os.environ.get("FLOWMILL_CACHE", Path.home() / ".cache" / "flowmill"))
    python = {False: sys.executable, True: str(peers / "bench-peers" / "bin" / "python")}

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    import tempfile

    with (
        tempfile.TemporaryDirectory(prefix="flowmill-bench-") as tmp,
        EmbeddedKafka() as kafka,
        EmbeddedRedis() as redis_server,
    ):
        rows, meta = measure(
            kafka.bootstrap_servers,
            redis_server.url,
            lambda t, p: kafka.create_topics([(t, p)]),
            Path(tmp),
            python,
            args.events,
            args.keys,
            args.rounds,
            chosen,
            log,
        )
    summary = summarize(rows)
    print(json.dumps({"meta": meta, "rows": summary}, indent=2))
    print("\n| contender | events/s | % of raw aiokafka | CPU us/event | runs (ev/s) |")
    print("|---|---:|---:|---:|---|")
    for row in summary:
        pct, rate, cpu = row["pct_of_raw_aiokafka"], row["events_per_s"], row["cpu_us_per_event"]
        runs = ", ".join(f"{r:,}" for r in row["runs"])
        print(
            f"| {row['contender']} | "
            + (f"{rate:,.0f}" if rate else "-")
            + " | "
            + (f"{pct:.1f}%" if pct is not None else "-")
            + " | "
            + (f"{cpu:.2f}" if cpu is not None else "-")
            + f" | {runs} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
