"""Command line of the node harness, for scripts/cluster.sh (which documents the commands).

python -m tests.harness.node_cli serve         start the node in this namespace; stop on SIGTERM
python -m tests.harness.node_cli stop NETNS    ask the serving process to stop, and wait
python -m tests.harness.node_cli clean-stale   undo runs whose owner process is gone
python -m tests.harness.node_cli host-snapshot  what check-clean compares with, as JSON
python -m tests.harness.node_cli check-clean NETNS [--before SNAPSHOT]
                                               fail if the run left anything behind
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
import time

from tests.harness import node_host


def env_file(netns: str) -> str:
    return str(node_host.RUNS_ROOT / netns / "env.sh")


def _serve(args: argparse.Namespace) -> int:
    # Imported here: the other commands run on every wrapper call and need only the stdlib.
    from tests.harness.node import KubeNode

    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stopping.set())
    node = KubeNode()
    node.start()
    try:
        lines = [f"export {k}={shlex.quote(v)}" for k, v in node.env().items()]
        with open(env_file(node.netns), "w") as f:
            f.write("\n".join(lines) + "\n")
        print("[node] serving; SIGTERM (scripts/cluster.sh down) tears it down", flush=True)
        stopping.wait()
    finally:
        node.stop()
    if node.leftovers:
        print("[node] left on the host:\n  " + "\n  ".join(node.leftovers), file=sys.stderr)
        return 1
    return 0


def _stop(args: argparse.Namespace) -> int:
    state = node_host.RunState.load(node_host.RUNS_ROOT / args.netns)
    if state is None:
        print(f"[node] no cluster runs in namespace {args.netns}")
        return 0
    try:
        os.kill(state.owner_pid, signal.SIGTERM)
    except ProcessLookupError:
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            os.kill(state.owner_pid, 0)
        except ProcessLookupError:
            return 0
        time.sleep(0.2)
    print(f"[node] process {state.owner_pid} still running after {args.timeout:.0f}s")
    return 1


def _clean_stale(args: argparse.Namespace) -> int:
    for netns in node_host.clean_stale_runs():
        print(f"[node] cleaned up the leftovers of a dead run in namespace {netns}")
    return 0


def _check_clean(args: argparse.Namespace) -> int:
    state = node_host.RunState(netns=args.netns, owner_pid=0)
    left = node_host.leftovers(state)
    if node_host.netns_exists(args.netns):
        left.append(f"network namespace {args.netns}")
    if args.before:
        with open(args.before) as f:
            before = json.load(f)
        left += node_host.sysctl_changes(before["sysctls"])
        left += [f"directory {d}" for d in before["absent_dirs"] if os.path.exists(d)]
    if left:
        print("[node] the host is not as it was:\n  " + "\n  ".join(left), file=sys.stderr)
        return 1
    print(f"[node] host clean after {args.netns}: no process, mount, cgroup, netns or file left")
    return 0


def _host_snapshot(args: argparse.Namespace) -> int:
    absent = [str(d) for d in node_host.HOST_DIRS if not d.exists()]
    print(json.dumps({"sysctls": node_host.read_sysctls(), "absent_dirs": absent}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.node_cli")
    sub = parser.add_subparsers(required=True)
    sub.add_parser("serve").set_defaults(handler=_serve)
    p = sub.add_parser("stop")
    p.add_argument("netns")
    p.add_argument("--timeout", type=float, default=180.0)
    p.set_defaults(handler=_stop)
    sub.add_parser("clean-stale").set_defaults(handler=_clean_stale)
    p = sub.add_parser("check-clean")
    p.add_argument("netns")
    p.add_argument("--before", metavar="FILE", help="output of `host-snapshot` before the run")
    p.set_defaults(handler=_check_clean)
    sub.add_parser("host-snapshot").set_defaults(handler=_host_snapshot)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
