"""The `flowmill` command: one image, one entry point, the component chosen by subcommand."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from flowmill.manifest import PipelineInvalid, load_pipelines, pipeline_warnings

Handler = Callable[[argparse.Namespace], int]


def _validate(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            pipelines = load_pipelines(path)
        except PipelineInvalid as err:
            print(err, file=sys.stderr)
            failed = True
            continue
        except OSError as err:
            print(f"{path}: {err.strerror}", file=sys.stderr)
            failed = True
            continue
        for p in pipelines:
            s = p.spec
            print(
                f"{path}: Pipeline {p.name} is valid "
                f"({len(s.topics)} topics, {len(s.sources)} sources, {len(s.steps)} steps)"
            )
            for warning in pipeline_warnings(p):
                print(f"{path}: warning: {warning}", file=sys.stderr)
    return 1 if failed else 0


def _crd(args: argparse.Namespace) -> int:
    from flowmill.crd import render_crd, write_crd_files

    if args.write:
        for path in write_crd_files():
            print(f"wrote {path}")
    else:
        sys.stdout.write(render_crd())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, separate from main() so tests and docs can inspect it."""
    parser = argparse.ArgumentParser(
        prog="flowmill",
        description="Kubernetes-native streaming pipelines from one YAML manifest.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check Pipeline manifests; every error names its field")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(handler=_validate)

    p = sub.add_parser("crd", help="print the Pipeline CRD generated from the spec models")
    p.add_argument("--write", action="store_true", help="rewrite the committed CRD files")
    p.set_defaults(handler=_crd)

    from flowmill_api import command as api_command
    from flowmill_operator import command as operator_command
    from flowmill_workers import command as worker_command

    operator_command.configure_render(
        sub.add_parser("render", help="print the manifests the operator would create")
    )
    operator_command.configure_operator(sub.add_parser("operator", help="run the Kopf operator"))
    api_command.configure(sub.add_parser("api", help="serve a Pipeline's tables over HTTP"))

    worker_command.configure(sub.add_parser("worker", help="run one source or step of a Pipeline"))

    from flowmill.run import command as run_command

    run_command.configure(sub.add_parser("run", help="run a whole Pipeline on this machine"))
    from flowmill.run import control

    control.configure_pause(sub.add_parser("pause", help="pause a running `flowmill run`"))
    control.configure_resume(sub.add_parser("resume", help="resume a paused `flowmill run`"))
    control.configure_replay(
        sub.add_parser("replay", help="recompute a step of a running `flowmill run` from a time")
    )
    from flowmill import replay

    replay.configure_reset(
        sub.add_parser(
            "replay-reset",
            help="reset a stopped step's positions and table (what the operator's replay Job runs)",
        )
    )
    from flowmill.testing import command as test_command

    test_command.configure(
        sub.add_parser("test", help="run a manifest's tests (fixtures in, expected tables out)")
    )
    from flowmill.run import gbfs_server

    gbfs_server.configure(
        sub.add_parser("gbfs-feed", help="serve a local GBFS feed (the Citi Bike example's)")
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `flowmill` console script."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
