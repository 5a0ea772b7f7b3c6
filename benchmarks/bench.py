"""`make bench`: every benchmark of flowmill in one run, one table, JSON beside it.

    .venv/bin/python benchmarks/bench.py [--quick] [--out DIR] [--only worker,e2e,...]

Starts its own Kafka broker and Redis server (flowmill.local, as provisioned by
scripts/provision.sh --local), runs the parts in this order and prints one Markdown table
per part, all measured in this run:

- worker: events/s, % of raw aiokafka, CPU us/event and peak RSS of raw aiokafka, raw
  confluent-kafka, flowmill's window step, Quix Streams, Bytewax and a Faust agent, each
  its own process, alternating over rounds, each result checked (bench_throughput.py);
- e2e: event produced -> visible in the API, p50/p95/p99 at fixed rates, and the highest
  sustainable rate (bench_e2e.py);
- api: flowmill api against a bare ASGI app and redis-benchmark (bench_api.py);
- memory: the window step's memory, and Redis's, per open key (bench_throughput.py);
- operator: apply -> children p50/p99 and many Pipelines' convergence on a real
  apiserver (bench_operator.py; needs scripts/provision.sh kube).

`--quick` uses tiny sizes and one round: it checks that everything works, its figures mean
nothing. Results: DIR/bench.json and DIR/bench.md (default benchmarks/results/, or
benchmarks/results/quick/ with --quick); `--doc FILE` also replaces the part of FILE
between `<!-- bench:begin -->` and `<!-- bench:end -->` with the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bench_throughput  # noqa: E402

from flowmill.local.kafka import EmbeddedKafka  # noqa: E402
from flowmill.local.redis import EmbeddedRedis  # noqa: E402

PARTS = ("worker", "e2e", "api", "memory", "operator")
PEERS_PYTHON = Path(os.environ.get("FLOWMILL_CACHE", Path.home() / ".cache" / "flowmill"))
PEERS_PYTHON = PEERS_PYTHON / "bench-peers" / "bin" / "python"

SIZES = {
    # part: (quick, full)
    "worker_events": (20_000, 300_000),
    "worker_rounds": (1, 3),
    "e2e_rates": ([1_000.0], [1_000.0, 10_000.0]),
    "e2e_search": ([5_000.0], [20_000.0, 40_000.0, 80_000.0]),
    "e2e_seconds": (4.0, 10.0),
    "api_seconds": (2.0, 5.0),
    "api_runs": (1, 3),
    "memory_keys": ((1_000, 5_000), (1_000, 1_000_000)),
    "operator": ((5, 10), (50, 200)),
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    load = os.getloadavg()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in load],
        "commit": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip(),
    }


def _n(v: float | None, digits: int = 0, suffix: str = "") -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}{suffix}"


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Measured {m['date']} on {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
        f"Python {m['python']}, commit {m['commit']}; load average at start "
        f"{', '.join(map(str, m['load_average_at_start']))}"
        + (
            " — **--quick: sizes too small for the figures to mean anything**"
            if results["quick"]
            else ""
        )
        + ".",
        "",
    ]
    if "worker" in results:
        w = results["worker"]
        meta = w["meta"]
        lines += [
            f"**Worker**: {meta['events']:,} JSON events, {meta['keys']} keys, {meta['partitions']} "
            f"partitions, 1-minute tumbling windows ({meta['windows']:,}); each contender its own "
            f"process, {meta['rounds']} round(s), alternating; medians of the runs whose result was correct.",
            "",
            "| contender | events/s | % of raw aiokafka | CPU µs/event | peak RSS MB | runs (ev/s) | checked |",
            "|---|---:|---:|---:|---:|---|---|",
        ]
        for r in w["rows"]:
            problems = "; ".join(r["problems"])
            lines.append(
                f"| {r['contender']} | {_n(r['events_per_s'])} | {_n(r['pct_of_raw_aiokafka'], 0, '%')} "
                f"| {_n(r['cpu_us_per_event'], 2)} | {_n(r['peak_rss_mb'])} "
                f"| {', '.join(f'{x:,}' for x in r['runs'])} | {r['checked']}"
                + (f" ({problems})" if problems else "")
                + " |"
            )
        lines.append("")
    if "e2e" in results:
        e = results["e2e"]
        lines += [
            "**End to end** (event handed to the producer -> visible in the API, probe key "
            "polled every 2 ms):",
            "",
            "| target ev/s | sent ev/s | p50 ms | p95 ms | p99 ms | probes visible |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in e["rows"]:
            lines.append(
                f"| {_n(r['rate'])}{'' if r['kind'] == 'fixed' else ' (search)'} | {_n(r['achieved_ev_per_s'])} "
                f"| {_n(r['p50_ms'], 1)} | {_n(r['p95_ms'], 1)} | {_n(r['p99_ms'], 1)} "
                f"| {r['visible']}/{r['probes']} |"
            )
        lines += [
            "",
            f"Highest sustainable rate tried (sent in full, p99 < 1 s): {_n(e['sustainable_ev_per_s'])} ev/s.",
            "",
        ]
    if "api" in results:
        a = results["api"]
        lines += [
            f"**API** (one process; load: {a['load']}, {a['connections']} connections):",
            "",
            "| scenario | req/s | % of bare ASGI | p50 ms | p99 ms | errors | runs |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in a["rows"]:
            lines.append(
                f"| {r['scenario']} | {_n(r['req_per_s'])} | {_n(r['pct_of_bare_asgi'], 0, '%')} "
                f"| {_n(r['p50_ms'], 2)} | {_n(r['p99_ms'], 2)} | {r['errors']} "
                f"| {', '.join(f'{x:,}' for x in r['runs'])} |"
            )
        lines.append("")
    if "memory" in results:
        mem = results["memory"]
        lines += [
            f"**Memory per open key** ({mem['events']:,} events over {mem['keys'][0]:,} -> {mem['keys'][1]:,} keys, one open window each): "
            f"worker peak RSS {_n(mem['worker_peak_rss_mb'][0])} -> {_n(mem['worker_peak_rss_mb'][1])} MB "
            f"({_n(mem['worker_bytes_per_key'], 1)} bytes per key); Redis {_n(mem['redis_bytes_per_key'])} "
            f"bytes per key (the window hash, its indexes and top-N sets)"
            + ("" if mem["checked"] else f" — CHECK FAILED: {mem['problems']}")
            + ".",
            "",
        ]
    if "operator" in results:
        o = results["operator"]
        if "skipped" in o:
            lines += [f"**Operator**: skipped ({o['skipped']}).", ""]
        else:
            lines += [
                f"**Operator**: apply -> all children, {o['sequential']} Pipelines one by one: "
                f"p50 {_n(o['apply_to_children_p50_s'], 2)} s, p99 {_n(o['apply_to_children_p99_s'], 2)} s; "
                f"{o['at_once']} Pipelines created at once converged in {_n(o['convergence_s'], 1)} s.",
                "",
            ]
    return "\n".join(lines)


def splice(doc: Path, table: str) -> None:
    text = doc.read_text()
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"{doc} has no {begin} ... {end} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{table}\n{end}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round")
    parser.add_argument("--out", type=Path, help="results folder")
    parser.add_argument("--only", help=f"comma-separated parts of {','.join(PARTS)}")
    parser.add_argument("--doc", type=Path, help="also splice the tables into this file")
    args = parser.parse_args()
    size = {k: v[0] if args.quick else v[1] for k, v in SIZES.items()}
    parts = args.only.split(",") if args.only else list(PARTS)
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}; parts: {', '.join(PARTS)}")
    out_dir = args.out or (HERE / "results" / ("quick" if args.quick else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    python = {False: sys.executable, True: str(PEERS_PYTHON)}
    if "worker" in parts and not PEERS_PYTHON.exists():
        raise SystemExit(f"{PEERS_PYTHON} is missing: run scripts/provision.sh bench")

    results: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="flowmill-bench-"))
    try:
        with EmbeddedKafka() as kafka, EmbeddedRedis() as redis_server:
            bootstrap, redis_url = kafka.bootstrap_servers, redis_server.url
            create_topic: Callable[[str, int], None] = lambda t, p: kafka.create_topics([(t, p)])  # noqa: E731
            if "worker" in parts:
                rows, meta = bench_throughput.measure(
                    bootstrap, redis_url, create_topic, workdir, python,
                    size["worker_events"], 200, size["worker_rounds"],
                    bench_throughput.CONTENDERS_ALL, log,
                )  # fmt: skip
                results["worker"] = {"meta": meta, "rows": bench_throughput.summarize(rows)}
            save_partial(out_dir, results)
            if "e2e" in parts:
                import api_bench
                import bench_e2e

                results["e2e"] = bench_e2e.measure(
                    bootstrap, redis_url, create_topic, workdir, api_bench.start_api,
                    size["e2e_rates"], size["e2e_search"], size["e2e_seconds"], log,
                )  # fmt: skip
            save_partial(out_dir, results)
            if "api" in parts:
                import bench_api

                results["api"] = bench_api.measure(
                    redis_url, workdir, size["api_seconds"], size["api_runs"], 16, log
                )
            save_partial(out_dir, results)
            if "memory" in parts:
                results["memory"] = bench_throughput.memory_per_key(
                    bootstrap, redis_url, create_topic, workdir, python, size["memory_keys"], log
                )
        if "operator" in parts:
            results["operator"] = _operator(*size["operator"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["seconds"] = round(time.monotonic() - began, 1)
    command = "make bench-quick" if args.quick else "make bench"
    table = markdown(results) + f"\n(`{command}` took {results['seconds']:.0f} s.)\n"
    (out_dir / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "bench.md").write_text(table)
    if args.doc:
        splice(args.doc, table)
    print(table)
    log(f"wrote {out_dir / 'bench.md'} and {out_dir / 'bench.json'}")
    return 0


def save_partial(out_dir: Path, results: dict[str, Any]) -> None:
    """The parts measured so far, so that a later part's failure loses only itself."""
    (out_dir / "bench.partial.json").write_text(json.dumps(results, indent=2) + "\n")


def _operator(sequential: int, at_once: int) -> dict[str, Any]:
    try:
        import bench_operator

        return bench_operator.measure(sequential, at_once, log)
    except FileNotFoundError as err:  # etcd / kube-apiserver not provisioned
        return {"skipped": f"{err}; run scripts/provision.sh kube"}


if __name__ == "__main__":
    sys.exit(main())
