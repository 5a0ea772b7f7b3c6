#!/usr/bin/env bash
# A single-node Kubernetes cluster of real processes (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy, containerd, a CNI bridge, plus
# the Kafka and Redis its pods use) in a network namespace of its own.
#
#   scripts/cluster.sh up              start it in the background; prints how to use it
#   scripts/cluster.sh env             print its environment again (KUBECONFIG, ...)
#   scripts/cluster.sh exec CMD...     run CMD inside the namespace with that environment,
#                                      e.g. scripts/cluster.sh exec kubectl get pods -A
#   scripts/cluster.sh down            tear it down and check the host is as it was
#   scripts/cluster.sh test [-- ARGS]  run pytest ARGS in a fresh namespace of their own; the
#                                      kube_node fixture starts the node there when needed
#   scripts/cluster.sh run CMD...      run CMD the same way (e.g. a benchmark that starts a node)
#
# The namespace has no link to the host: what the kubelet and kube-proxy do to iptables,
# routes and sysctls stays in it, and everything in it (pods, tests) talks only to addresses
# inside it. $FLOWMILL_CLUSTER names the namespace of `up` (default flowmill-cluster).
# The components come from scripts/provision.sh; the implementation is tests/harness/node.py.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=$ROOT/.venv/bin/python
CACHE=${FLOWMILL_CACHE:-$HOME/.cache/flowmill}
NETNS=${FLOWMILL_CLUSTER:-flowmill-cluster}
RUNS=/tmp/flowmill-node
cd "$ROOT"

say() { printf '[cluster] %s\n' "$*"; }
node_cli() { "$PY" -m tests.harness.node_cli "$@"; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    say "a node needs root (network namespaces, cgroups, mounts)" >&2
    exit 1
  fi
}

netns_create() {
  ip netns add "$1"
  ip -n "$1" link set lo up
}

# Only the network namespace changes: mounts and cgroups must stay visible to the host
# (`ip netns exec` would also remount /sys, hiding the cgroup hierarchies the kubelet needs).
in_netns() {
  local ns=$1
  shift
  FLOWMILL_NETNS=$ns PATH="$CACHE/bin:$PATH" nsenter --net="/run/netns/$ns" -- "$@"
}

# One node session at a time on a machine: a node changes machine-wide state (kernel modules,
# sysctls that are not per namespace) that a second session's host check would see as its own
# leak. The lock is an open file descriptor, so it goes with the last process holding it.
LOCK=/run/flowmill-node.lock
take_node_lock() {
  exec 9>"$LOCK"
  if ! flock -n 9; then
    say "another node session holds $LOCK; waiting for it (up to an hour)"
    flock -w 3600 9 || { say "gave up waiting for $LOCK" >&2; exit 1; }
  fi
}

snapshot_host() { node_cli host-snapshot > "$1"; }

finish() {  # finish NETNS SNAPSHOT: remove the namespace, then check the host
  local ns=$1 before=$2
  if [ -e "/run/netns/$ns" ]; then ip netns del "$ns"; fi
  node_cli check-clean "$ns" --before "$before"
}

cmd_up() {
  need_root
  if [ -f "$RUNS/$NETNS/env.sh" ] && [ -e "/run/netns/$NETNS" ]; then
    say "already up in namespace $NETNS"
    cmd_env
    return
  fi
  # The serving process below inherits the lock and holds it while the cluster lives.
  take_node_lock
  node_cli clean-stale
  mkdir -p "$RUNS"
  snapshot_host "$RUNS/$NETNS.before.json"
  netns_create "$NETNS"
  local log=$RUNS/$NETNS.log
  : > "$log"
  local began=$SECONDS
  in_netns "$NETNS" setsid "$PY" -m tests.harness.node_cli serve >> "$log" 2>&1 < /dev/null &
  local pid=$!
  until [ -f "$RUNS/$NETNS/env.sh" ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      say "the node did not start; its log ($log):" >&2
      tail -n 40 "$log" >&2
      finish "$NETNS" "$RUNS/$NETNS.before.json" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
  say "up in $((SECONDS - began))s, namespace $NETNS (log: $log)"
  cmd_env
  cat <<EOF
# Everything listens inside the namespace only; run clients there:
#   scripts/cluster.sh exec kubectl get pods -A
#   scripts/cluster.sh exec bash        # a shell with this environment
# Tear down with: scripts/cluster.sh down
EOF
}

cmd_env() {
  if [ ! -f "$RUNS/$NETNS/env.sh" ]; then
    say "no cluster is up in namespace $NETNS (scripts/cluster.sh up)" >&2
    exit 1
  fi
  cat "$RUNS/$NETNS/env.sh"
}

cmd_exec() {
  need_root
  [ $# -gt 0 ] || set -- bash
  if [ ! -f "$RUNS/$NETNS/env.sh" ]; then
    say "no cluster is up in namespace $NETNS (scripts/cluster.sh up)" >&2
    exit 1
  fi
  # shellcheck disable=SC1090
  set -a; . "$RUNS/$NETNS/env.sh"; set +a
  in_netns "$NETNS" "$@"
}

cmd_down() {
  need_root
  local began=$SECONDS
  node_cli stop "$NETNS"
  # If the serving process died without tearing down, this does it.
  node_cli clean-stale
  local before=$RUNS/$NETNS.before.json
  if [ -f "$before" ]; then
    finish "$NETNS" "$before"
    rm -f "$before" "$RUNS/$NETNS.log"
  elif [ -e "/run/netns/$NETNS" ]; then
    ip netns del "$NETNS"
  fi
  rmdir "$RUNS" 2>/dev/null || true
  say "down in $((SECONDS - began))s"
}

cmd_isolated() {  # cmd_isolated CMD...: CMD in a fresh namespace of its own, host checked after
  need_root
  take_node_lock
  node_cli clean-stale
  local ns=flowmill-test-$$
  mkdir -p "$RUNS"
  local before=$RUNS/$ns.before.json
  snapshot_host "$before"
  netns_create "$ns"
  local rc=0
  in_netns "$ns" "$@" || rc=$?
  if ! finish "$ns" "$before"; then [ "$rc" != 0 ] || rc=1; fi
  rm -f "$before"
  rmdir "$RUNS" 2>/dev/null || true
  return "$rc"
}

cmd_test() {
  [ "${1:-}" != "--" ] || shift
  cmd_isolated "$ROOT/.venv/bin/pytest" "$@"
}

case "${1:-}" in
  up) cmd_up ;;
  env) cmd_env ;;
  exec) shift; cmd_exec "$@" ;;
  down) cmd_down ;;
  test) shift; cmd_test "$@" ;;
  run) shift; [ "${1:-}" != "--" ] || shift; cmd_isolated "$@" ;;
  *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
