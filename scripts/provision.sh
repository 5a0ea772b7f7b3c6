#!/usr/bin/env bash
# Installs everything flowmill's local runs and tests need, into a cache that outlives clones.
#
#   scripts/provision.sh            all components (tests need them)
#   scripts/provision.sh --local    only what `flowmill run` needs: Python env, Kafka, Redis
#   scripts/provision.sh GROUP      one group (see the usage line at the end), e.g.
#                                   node: containerd, runc, CNI, kubelet, ...; images;
#                                   bench: the peers `make bench` runs (not in the default set)
#
# Idempotent: each component is checked first and skipped when present, so a second run
# does nothing. Components land in $FLOWMILL_CACHE (default ~/.cache/flowmill); the
# Python environment is .venv in the repository.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE=$ROOT/scripts/provision
SAY_AS=provision
. "$HERE/lib.sh"
BIN=$CACHE/bin

KUBE_VERSION=v1.34.4
ETCD_VERSION=v3.5.21
HELM_VERSION=v3.16.4
KAFKA_VERSION=3.9.1
PROMETHEUS_ADAPTER_VERSION=v0.12.0
SKAFFOLD_VERSION=v2.16.1
SEAWEEDFS_VERSION=v0.0.0-20261109003541-7506e5f91cd6
CONTAINERD_VERSION=v2.4.2
CRICTL_VERSION=v1.34.0
VEGETA_VERSION=v12.12.0

mkdir -p "$BIN"

provision_python_env() {
  local want
  want=$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)
  if [ -x "$ROOT/.venv/bin/python" ] && [ -f "$ROOT/.venv/.stamp" ] && [ "$(cat "$ROOT/.venv/.stamp")" = "$want" ]; then
    say "python env: present"
    return
  fi
  say "python env: creating .venv and installing flowmill[dev]"
  python3.11 -m venv "$ROOT/.venv"
  "$ROOT/.venv/bin/pip" install -q --upgrade pip >/dev/null
  "$ROOT/.venv/bin/pip" install -q -e "$ROOT[dev]"
  printf '%s' "$want" > "$ROOT/.venv/.stamp"
}

provision_kafka() {
  if have_stamp kafka "$KAFKA_VERSION" && [ -s "$CACHE/kafka/classpath.txt" ]; then
    say "kafka $KAFKA_VERSION: present"
    return
  fi
  say "kafka $KAFKA_VERSION: resolving broker jars from Maven Central"
  mkdir -p "$CACHE/kafka"
  mvn -q -B -f "$HERE/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    -Dmaven.repo.local="$CACHE/kafka/m2" \
    dependency:build-classpath -Dmdep.outputFile="$CACHE/kafka/classpath.txt" >/dev/null
  put_stamp kafka "$KAFKA_VERSION"
}

provision_redis() {
  if command -v redis-server >/dev/null 2>&1; then
    say "redis-server: present ($(redis-server --version | cut -d' ' -f3))"
    return
  fi
  apt_install redis-server
  # The Debian package starts a system service; tests start their own servers.
  (service redis-server stop || true) >/dev/null 2>&1
}

provision_promtool() {
  if command -v promtool >/dev/null 2>&1; then
    say "promtool: present"
    return
  fi
  apt_install prometheus
  (service prometheus stop || true) >/dev/null 2>&1
}

provision_prometheus_adapter() {
  # The autoscaling tests run Debian's Prometheus (the promtool package's server binary)
  # and this adapter, which serves external.metrics.k8s.io to the HPA controller.
  if have_stamp prometheus-adapter "$PROMETHEUS_ADAPTER_VERSION" && [ -x "$BIN/adapter" ]; then
    say "prometheus-adapter $PROMETHEUS_ADAPTER_VERSION: present"
    return
  fi
  say "prometheus-adapter $PROMETHEUS_ADAPTER_VERSION: building from the Go module proxy (first time takes minutes)"
  # `go install ...@version` asks the proxy for the module's version list, which it refuses
  # for this module (403); an exact-version download followed by a build in its source works.
  go_build_in_module sigs.k8s.io/prometheus-adapter "$PROMETHEUS_ADAPTER_VERSION" ./cmd/adapter "$BIN/adapter" "-s -w"
  put_stamp prometheus-adapter "$PROMETHEUS_ADAPTER_VERSION"
}

provision_bench() {
  # What `make bench` compares flowmill with, in an env of its own (the peers pin their own
  # aiokafka, confluent-kafka and orjson versions, which must not move flowmill's), plus wrk
  # as the HTTP load generator (a Python client would be the bottleneck against a bare app).
  apt_install wrk
  provision_vegeta
  local env=$CACHE/bench-peers want
  want=$(sha256sum "$HERE/bench-peers.txt" | cut -c1-16)
  if have_stamp bench-peers "$want" && [ -x "$env/bin/python" ]; then
    say "bench peers: present"
    return
  fi
  say "bench peers: creating $env (Quix Streams, Bytewax, Faust, confluent-kafka)"
  rm -rf "$env"
  python3.11 -m venv "$env"
  "$env/bin/pip" install -q --upgrade pip >/dev/null
  "$env/bin/pip" install -q -r "$HERE/bench-peers.txt"
  put_stamp bench-peers "$want"
}

provision_vegeta() {
  # The API rows' open-loop load (a fixed offered rate, as wrk2 -R; Debian's wrk has no
  # rate): Go, so at the paced rate the client costs the shared cores far less than Python.
  if have_stamp vegeta "$VEGETA_VERSION" && [ -x "$BIN/vegeta" ]; then
    say "vegeta $VEGETA_VERSION: present"
    return
  fi
  say "vegeta $VEGETA_VERSION: building from the Go module proxy"
  CGO_ENABLED=0 GOBIN="$BIN" go install -trimpath -ldflags "-s -w" \
    "github.com/tsenart/vegeta/v12@$VEGETA_VERSION"
  put_stamp vegeta "$VEGETA_VERSION"
}

provision_chromium() {
  # The dashboard tests drive a real headless browser; Debian ships one (no download), and
  # the health view's test drives it through WebDriver with Debian's matching chromedriver.
  if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    say "chromium, chromedriver: present"
    return
  fi
  apt_install chromium chromium-driver fonts-dejavu-core
}

go_build() {  # go_build NAME STAMP MODULE_DIR PACKAGE LDFLAGS
  local name=$1 stamp=$2 dir=$3 pkg=$4 ldflags=$5
  if have_stamp "$name" "$stamp" && [ -x "$BIN/$name" ]; then
    say "$name $stamp: present"
    return
  fi
  say "$name $stamp: building from the Go module proxy (first time takes minutes)"
  # Built beside and renamed into place, so a binary that is running is never half-written.
  (cd "$dir" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$BIN/$name.tmp" "$pkg")
  mv "$BIN/$name.tmp" "$BIN/$name"
  put_stamp "$name" "$stamp"
}

kube_ldflags() {
  local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  printf '%s' "-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION \
-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
-X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION \
-X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
}

kube_build() {  # kube_build COMMAND: one of the wrapper module's cmd/ packages, at KUBE_VERSION
  go_build "$1" "$KUBE_VERSION" "$HERE/kube" "k8s.io/kubernetes/cmd/$1" "$(kube_ldflags)"
}

provision_kube() {
  kube_build kube-apiserver
  kube_build kube-controller-manager
  kube_build kubectl
}

# A real node: containerd v2 (built; Debian's 1.6 is end-of-life) and its ctr, with Debian's
# runc and CNI plugins (/usr/sbin/runc, /usr/lib/cni), the node's Kubernetes parts at the
# apiserver's version, and crictl, which removes pods through the CRI on teardown.
provision_node() {
  apt_install runc containernetworking-plugins iptables conntrack
  local cv="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
  go_build containerd "$CONTAINERD_VERSION" "$HERE/containerd" github.com/containerd/containerd/v2/cmd/containerd "$cv"
  go_build containerd-shim-runc-v2 "$CONTAINERD_VERSION" "$HERE/containerd" github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 "$cv"
  go_build ctr "$CONTAINERD_VERSION" "$HERE/containerd" github.com/containerd/containerd/v2/cmd/ctr "$cv"
  kube_build kubelet
  kube_build kube-scheduler
  kube_build kube-proxy
  go_build crictl "$CRICTL_VERSION" "$HERE/crictl" sigs.k8s.io/cri-tools/cmd/crictl \
    "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION"
}

# The flowmill image from the Dockerfile and the pause image, built with buildah (no Docker
# engine) into archives the node imports (scripts/image.sh says how).
provision_images() {
  apt_install debootstrap buildah skopeo gcc libc6-dev
  "$ROOT/scripts/image.sh" all
}

provision_etcd() {
  go_build etcd "$ETCD_VERSION" "$HERE/etcd" go.etcd.io/etcd/server/v3 "-s -w"
}

provision_helm() {
  local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  if have_stamp helm "$HELM_VERSION" && [ -x "$BIN/helm" ]; then
    say "helm $HELM_VERSION: present"
    return
  fi
  say "helm $HELM_VERSION: building from the Go module proxy"
  CGO_ENABLED=0 GOBIN="$BIN" go install -trimpath -ldflags "-s -w \
-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor \
-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  put_stamp helm "$HELM_VERSION"
}

go_build_in_module() {  # go_build_in_module MODULE VERSION PACKAGE OUTPUT LDFLAGS
  # Builds inside the module source that `go mod download` fetched for one exact version:
  # that honours the module's own replace directives, which `go install ...@version` refuses.
  local module=$1 version=$2 pkg=$3 out=$4 ldflags=$5 dir
  dir=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "$module@$version" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath -o "$out.tmp" -ldflags "$ldflags" "$pkg")
  mv "$out.tmp" "$out"
}

provision_skaffold() {
  # `go install ...@version` refuses skaffold (its go.mod has replace directives); building
  # inside the module source that `go mod download` fetched honours them.
  if have_stamp skaffold "$SKAFFOLD_VERSION" && [ -x "$BIN/skaffold" ]; then
    say "skaffold $SKAFFOLD_VERSION: present"
    return
  fi
  say "skaffold $SKAFFOLD_VERSION: building from the Go module proxy (first time takes minutes)"
  local module=github.com/GoogleContainerTools/skaffold/v2
  go_build_in_module "$module" "$SKAFFOLD_VERSION" ./cmd/skaffold "$BIN/skaffold" \
    "-s -w -X $module/pkg/skaffold/version.version=$SKAFFOLD_VERSION"
  put_stamp skaffold "$SKAFFOLD_VERSION"
}

provision_seaweedfs() {
  # SeaweedFS (Apache-2.0): the S3-compatible server the Parquet lake's S3 tests write to
  # (tests/harness/s3_server.py). Its go.mod has replace directives, so, as for skaffold,
  # it is built inside the module source of one exact version.
  if have_stamp weed "$SEAWEEDFS_VERSION" && [ -x "$BIN/weed" ]; then
    say "seaweedfs $SEAWEEDFS_VERSION: present"
    return
  fi
  say "seaweedfs $SEAWEEDFS_VERSION: building from the Go module proxy (first time takes minutes)"
  go_build_in_module github.com/seaweedfs/seaweedfs "$SEAWEEDFS_VERSION" ./weed "$BIN/weed" "-s -w"
  put_stamp weed "$SEAWEEDFS_VERSION"
}

provision_registry() {
  # The local registry `skaffold run -p buildah` pushes to; the cluster harness starts it
  # inside the node's namespace, so the package's own service stays off.
  if command -v docker-registry >/dev/null 2>&1; then
    say "docker-registry: present"
    return
  fi
  apt_install docker-registry
  (service docker-registry stop || true) >/dev/null 2>&1
}

# The whole script is read before main runs, so editing it during a run cannot change that run.
main() {
  local only=""
  case "${1:-}" in
    --local) only=local ;;
    "") ;;
    *) only=$1 ;;
  esac

  case "$only" in
    local) provision_python_env; provision_kafka; provision_redis ;;
    python) provision_python_env ;;
    kafka) provision_kafka ;;
    redis) provision_redis ;;
    kube) provision_etcd; provision_kube ;;
    node) provision_node ;;
    images) provision_images ;;
    helm) provision_helm ;;
    skaffold) provision_registry; provision_skaffold ;;
    promtool) provision_promtool ;;
    prometheus-adapter) provision_promtool; provision_prometheus_adapter ;;
    chromium) provision_chromium ;;
    seaweedfs) provision_seaweedfs ;;
    bench) provision_bench ;;
    "") provision_python_env; provision_kafka; provision_redis; provision_promtool; provision_chromium; provision_etcd; provision_kube; provision_helm; provision_registry; provision_skaffold; provision_prometheus_adapter; provision_seaweedfs; provision_node; provision_images ;;
    *) echo "usage: $0 [--local|python|kafka|redis|kube|node|images|helm|skaffold|promtool|prometheus-adapter|chromium|seaweedfs|bench]" >&2; exit 2 ;;
  esac
  say "done (cache: $CACHE)"
}

main "$@"; exit
