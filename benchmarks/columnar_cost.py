"""CPU per event of the window step's columnar path, in one process, no Kafka or Redis:
decoding a partition's batch into columns and aggregating them (the part of the step's
CPU that is its own; the fetch is aiokafka's and the write is Redis's).

    .venv/bin/python benchmarks/columnar_cost.py [--events 2500] [--keys 200]

The events are those of `make bench`'s worker part (bench_throughput.events); a batch of
10,000 over 4 partitions is 2,500 per partition, which is what one call handles.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "contenders")]

from bench_throughput import events  # noqa: E402
from flowmill_step import pipeline  # noqa: E402

from flowmill_workers.steps import windows_columnar  # noqa: E402
from flowmill_workers.steps.windows import WindowAggregator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2500)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=400)
    args = parser.parse_args()
    agg = WindowAggregator(pipeline("cost", "trips", 4).spec.step("agg"))
    decoder = windows_columnar.decoder_for(agg)
    values: list[bytes | None] = [v for _, v, _ in events(args.events, args.keys)]
    cols = decoder.decode(values)
    assert cols is not None, "the benchmark's events fit the columnar path"

    def us_per_event(call: Callable[[], object]) -> float:
        return timeit.timeit(call, number=args.repeat) / args.repeat / args.events * 1e6

    rows = [
        ("decode (msgspec, one buffer) into columns", us_per_event(lambda: decoder.decode(values))),
        ("aggregate the columns (numpy)", us_per_event(lambda: windows_columnar.aggregate_columns(agg, cols, None))),
    ]  # fmt: skip
    print(f"| part ({args.events:,} events, {args.keys} keys per call) | CPU us/event |")
    print("|---|---:|")
    for name, cost in rows:
        print(f"| {name} | {cost:.3f} |")
    print(f"| both | {sum(c for _, c in rows):.3f} |")


if __name__ == "__main__":
    main()
