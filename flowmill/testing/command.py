"""`flowmill test` arguments; the handler imports the runner only when it runs."""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

from flowmill.testing.crash import DEFAULT_KILLS
from flowmill.testing.spec import TEST_FILE_SUFFIX

EXIT_FAILED = 1
"""Some test failed."""
EXIT_INVALID = 2
"""The manifest or the test file is wrong (every error names its field); nothing ran."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        metavar="FILE",
        nargs="?",
        help=f"the Pipeline manifest; its tests are in the {TEST_FILE_SUFFIX} file beside it",
    )
    parser.add_argument(
        "--test",
        metavar="TESTFILE",
        help=f"the test file (default: FILE with {TEST_FILE_SUFFIX} for .yaml)",
    )
    parser.add_argument(
        "--case",
        action="append",
        default=[],
        metavar="NAME",
        help="run only the test of this name (repeatable)",
    )
    parser.add_argument(
        "--crash",
        choices=["random"],
        help="kill sources and steps (SIGKILL) at random moments while events flow; "
        "the results must be the same",
    )
    parser.add_argument(
        "--seed",
        type=int,
        help="seed of --crash random (default: drawn and printed, to rerun a failure)",
    )
    parser.add_argument(
        "--kills",
        type=int,
        default=DEFAULT_KILLS,
        metavar="N",
        help=f"kills per test with --crash random (default {DEFAULT_KILLS})",
    )
    parser.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT",
        help="use this Kafka instead of starting an embedded broker",
    )
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="use this Redis instead of starting one",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="longest wait per test for every event to be consumed (default 120)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch folder (copies, fixtures, logs)"
    )
    parser.add_argument(
        "--schema", action="store_true", help="print the test file's JSON Schema and exit"
    )
    parser.set_defaults(handler=_handler)


def default_test_file(manifest: Path) -> Path:
    """streampulse.yaml -> streampulse.test.yaml (any other name: + .test.yaml)."""
    name = manifest.name
    for ext in (".yaml", ".yml"):
        if name.endswith(ext):
            return manifest.with_name(name[: -len(ext)] + TEST_FILE_SUFFIX)
    return manifest.with_name(name + TEST_FILE_SUFFIX)


def _handler(args: argparse.Namespace) -> int:
    from flowmill.manifest import PipelineInvalid
    from flowmill.testing.runner import Options, TestRun, load
    from flowmill.testing.spec import TestFileInvalid, json_schema

    if args.schema:
        import json

        print(json.dumps(json_schema(), indent=2))
        return 0
    if args.file is None:
        print("flowmill test: give the manifest (FILE)", file=sys.stderr)
        return EXIT_INVALID
    if args.seed is not None and args.crash is None:
        print("flowmill test: --seed is the seed of --crash random", file=sys.stderr)
        return EXIT_INVALID
    manifest = Path(args.file)
    test_path = Path(args.test) if args.test else default_test_file(manifest)
    for path, what in ((manifest, "manifest"), (test_path, "test file")):
        if not path.is_file():
            print(f"flowmill test: no {what} {path}", file=sys.stderr)
            return EXIT_INVALID
    try:
        loaded = load(manifest, test_path)
    except (PipelineInvalid, TestFileInvalid) as err:
        print(err, file=sys.stderr)
        return EXIT_INVALID

    def say(line: str) -> None:
        print(line, flush=True)

    seed = None
    if args.crash == "random":
        seed = args.seed if args.seed is not None else secrets.randbelow(10**6)
        say(f"crash injection: seed {seed} (rerun with --crash random --seed {seed})")
    options = Options(
        bootstrap_servers=args.bootstrap_servers,
        redis_url=args.redis_url,
        crash_seed=seed,
        kills=args.kills,
        timeout=args.timeout,
        only=args.case,
        keep=args.keep,
    )
    say(f"{loaded.test_path}: {len(loaded.tests.tests)} test(s) of Pipeline {loaded.pipeline.name}")
    started = time.monotonic()
    try:
        results = TestRun(loaded, options, say).run()
    except TestFileInvalid as err:
        print(err, file=sys.stderr)
        return EXIT_INVALID
    failed = [r for r in results if not r.passed]
    say(
        f"{len(results) - len(failed)} passed, {len(failed)} failed "
        f"in {time.monotonic() - started:.1f} s"
    )
    return EXIT_FAILED if failed else 0
