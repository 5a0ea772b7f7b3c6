"""A single-node Kubernetes cluster of real processes, in a network namespace of its own.

On top of the control plane of tests/harness/kube.py (etcd, kube-apiserver,
kube-controller-manager) this starts containerd (Debian's runc, a CNI bridge), the
kube-scheduler, the kubelet and kube-proxy (iptables mode), imports the image archives that
provisioning built, and a Kafka broker and Redis server that pods use. Pods really run.

Everything runs inside the network namespace the caller created and entered
(scripts/cluster.sh does both and names it in $FLOWMILL_NETNS): the node's address
(NODE_IP) exists only there, so whatever the kubelet and kube-proxy do to iptables, routes
and net.* sysctls stays there, and the tests talk only to addresses inside it. The rest of
what a node changes on the host is recorded and undone by tests/harness/node_host.py.

State lives in one run directory, node_host.RUNS_ROOT/<netns>/, except where a component
insists on a host path (see node_host).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

from flowmill.local import ComponentMissing, cache_dir, find_binary
from flowmill.local.ports import StartStop, free_ports, spawn, tail, terminate
from tests.harness import node_host
from tests.harness.kube import KubeControlPlane, NodeAddress, wait_started
from tests.harness.node_services import NodeKafka, NodeRedis
from tests.harness.waiting import http_ok, https_ok, wait_for

NETNS_ENV = "FLOWMILL_NETNS"
# Set to a directory to keep the components' logs there after teardown (post-mortems).
KEEP_LOGS_ENV = "FLOWMILL_KEEP_NODE_LOGS"
# The node's address, on a dummy link inside the namespace. Every cluster has its own
# namespace, so parallel clusters can all use the same addresses.
NODE_IP = "10.203.0.1"
NODE_LINK = "fm-node"
POD_SUBNET = "10.204.0.0/24"
POD_BRIDGE = "fm-pods"
RUNC = Path("/usr/sbin/runc")
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")
IMAGES_ENV = "images.env"
# A plain-HTTP image registry on the namespace's loopback (Debian's docker-registry), where
# `skaffold run -p buildah` pushes and containerd pulls from (hosts.toml below).
REGISTRY = "localhost:5000"
# Keys of images.env (written by provisioning, scripts/image.sh): NAME and NAME_ARCHIVE.
FLOWMILL_IMAGE_KEY = "FLOWMILL_IMAGE"
PAUSE_IMAGE_KEY = "PAUSE_IMAGE"
ARCHIVE_SUFFIX = "_ARCHIVE"


class NodeError(RuntimeError):
    """The node could not start or was used wrongly; the message says what to do."""


@dataclass(frozen=True)
class NodeImages:
    """The locally built images, as named in images.env, and the archives to import at
    start; `others`: the rest of images.env (images a test imports itself, import_image)."""

    flowmill: str
    pause: str
    archives: tuple[Path, ...]
    others: dict[str, str] = field(default_factory=dict)

    @classmethod
    def provisioned(cls) -> NodeImages:
        directory = cache_dir() / "images"
        env_file = directory / IMAGES_ENV
        try:
            lines = env_file.read_text().splitlines()
        except OSError:
            raise ComponentMissing("the node's images (images.env)", str(env_file)) from None
        pairs = (line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
        names = {k.strip(): v.strip().strip("\"'") for k, v in pairs}
        keys = [FLOWMILL_IMAGE_KEY, PAUSE_IMAGE_KEY]
        missing = [k for k in keys + [k + ARCHIVE_SUFFIX for k in keys] if not names.get(k)]
        if missing:
            raise ComponentMissing(f"{', '.join(missing)} in {IMAGES_ENV}", str(env_file))
        archives = tuple(Path(names[k + ARCHIVE_SUFFIX]) for k in keys)
        absent = [str(a) for a in archives if not a.is_file()]
        if absent:
            raise ComponentMissing(f"the image archives {', '.join(absent)}", str(directory))
        others = {
            k: v
            for k, v in names.items()
            if k not in keys and k.removesuffix(ARCHIVE_SUFFIX) not in keys
        }
        return cls(names[FLOWMILL_IMAGE_KEY], names[PAUSE_IMAGE_KEY], archives, others)

    def other(self, key: str) -> tuple[str, Path]:
        """The image images.env names `key` and its archive; missing ones name the
        provisioning step that builds them (scripts/image.sh)."""
        name, archive = self.others.get(key), self.others.get(key + ARCHIVE_SUFFIX)
        where = str(cache_dir() / "images")
        if not name or not archive:
            raise ComponentMissing(f"{key} in {IMAGES_ENV}", where)
        if not Path(archive).is_file():
            raise ComponentMissing(f"the image archive {archive}", where)
        return name, Path(archive)


@dataclass(frozen=True)
class _Binaries:
    containerd: Path
    shim: Path
    ctr: Path
    crictl: Path
    kubelet: Path
    scheduler: Path
    proxy: Path
    registry: Path

    @classmethod
    def provisioned(cls) -> _Binaries:
        found = cls(
            containerd=find_binary("containerd"),
            shim=find_binary("containerd-shim-runc-v2"),
            ctr=find_binary("ctr"),
            crictl=find_binary("crictl"),
            kubelet=find_binary("kubelet"),
            scheduler=find_binary("kube-scheduler"),
            proxy=find_binary("kube-proxy"),
            registry=find_binary("docker-registry"),
        )
        for name in ("iptables", "conntrack", "ip"):
            find_binary(name)
        if not RUNC.is_file():
            raise ComponentMissing("runc (Debian package runc)", str(RUNC))
        for plugin in CNI_PLUGINS:
            if not (CNI_BIN_DIR / plugin).is_file():
                raise ComponentMissing(
                    f"CNI plugin {plugin} (Debian package containernetworking-plugins)",
                    str(CNI_BIN_DIR),
                )
        return found


class KubeNode(StartStop):
    """The whole single-node cluster; start() in the namespace named by $FLOWMILL_NETNS.

    After start(): `control_plane` (its kubeconfig is the admin's), `kafka` and `redis`
    (reachable from pods at NODE_IP), `images`, `name` (the Node's name), and the timings
    in `startup_seconds` and `timings`. stop() removes the pods through the API and the
    CRI, stops everything and sets `leftovers` to what it left on the host.
    """

    def __init__(
        self, netns: str | None = None, *, start_timeout: float = 90.0, log_level: int = 1
    ) -> None:
        self.netns = netns or os.environ.get(NETNS_ENV, "")
        self.name = self.netns
        self.start_timeout = start_timeout
        self.log_level = log_level
        self.images: NodeImages | None = None
        self.control_plane: KubeControlPlane | None = None
        self.kafka: NodeKafka | None = None
        self.redis: NodeRedis | None = None
        self.state: node_host.RunState | None = None
        self.startup_seconds: float | None = None
        self.timings: dict[str, float] = {}
        self.leftovers: list[str] = []
        self._procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    # -- paths -------------------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        if self.state is None:
            raise RuntimeError("KubeNode is not started")
        return self.state.run_dir

    @property
    def containerd_socket(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"

    @property
    def kubeconfig(self) -> Path:
        if self.control_plane is None or self.control_plane.kubeconfig is None:
            raise RuntimeError("KubeNode is not started")
        return self.control_plane.kubeconfig

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> KubeNode:
        if self.state is not None:
            raise RuntimeError("KubeNode already started")
        require_own_netns(self.netns)
        binaries = _Binaries.provisioned()
        self.images = NodeImages.provisioned()
        began = time.monotonic()
        self.state = node_host.begin_run(self.netns)
        try:
            self._timed("network", self._setup_network)
            self._timed("kafka+redis", self._start_services)
            self._timed("control plane", self._start_control_plane)
            self._timed("registry", lambda: self._start_registry(binaries))
            self._timed("containerd", lambda: self._start_containerd(binaries))
            self._timed("images", lambda: self._import_images(binaries))
            self._timed("scheduler", lambda: self._start_scheduler(binaries))
            self._timed("kubelet", lambda: self._start_kubelet(binaries))
            self._timed("kube-proxy", lambda: self._start_proxy(binaries))
            self._timed("node Ready", self._wait_node_ready)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        steps = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
        print(f"[node] {self.name} Ready in {self.startup_seconds:.1f}s ({steps})")
        return self

    def stop(self) -> None:
        """Tear down in the order that leaves nothing behind, then list in `leftovers` what
        is still on the host (nothing, when all went well)."""
        if self.state is None:
            return
        began = time.monotonic()
        # Each phase's time is printed: the teardown ends the suite, so it is on CI's path.
        phases: dict[str, float] = {}
        last = [began]

        def mark(phase: str) -> None:
            now = time.monotonic()
            phases[phase], last[0] = now - last[0], now

        control_plane = self.control_plane
        if control_plane is not None and control_plane.server is not None:
            # Nothing may recreate the pods that are about to go.
            control_plane.stop_component("kube-controller-manager")
            self._stop_component("kube-scheduler")
            if self._running("kubelet"):
                self._delete_all_pods()
        mark("pods")
        self._stop_component("kubelet")
        mark("kubelet")
        if self._running("containerd"):
            # Whatever the kubelet did not get to: sandboxes, their containers and netns.
            self._crictl("rmp", "--force", "--all", check=False)
        self._stop_component("kube-proxy")
        self._stop_component("containerd")
        mark("containerd")
        _delete_links(NODE_LINK, POD_BRIDGE)
        for _, proc, _ in reversed(self._procs):
            terminate(proc, 10.0)
        self._procs.clear()
        for service in (self.redis, self.kafka, control_plane):
            if service is not None:
                service.stop()
        self.redis = self.kafka = self.control_plane = None
        mark("services")
        state, self.state = self.state, None
        _keep_logs(state.run_dir, os.environ.get(KEEP_LOGS_ENV))
        node_host.clean_run(state)
        mark("host")
        self.timings["teardown"] = time.monotonic() - began
        self.leftovers = node_host.leftovers(state)
        steps = ", ".join(f"{k} {v:.1f}s" for k, v in phases.items())
        print(f"[node] {state.netns} torn down in {self.timings['teardown']:.1f}s ({steps})")

    # -- clients -----------------------------------------------------------------------------

    def api_client(self) -> k8s_client.ApiClient:
        if self.control_plane is None:
            raise RuntimeError("KubeNode is not started")
        return self.control_plane.api_client()

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60.0) -> str:
        if self.control_plane is None:
            raise RuntimeError("KubeNode is not started")
        return self.control_plane.kubectl(*args, check=check, timeout=timeout)

    def env(self) -> dict[str, str]:
        """What a shell in the namespace needs to use this cluster."""
        assert self.kafka is not None and self.redis is not None
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "FLOWMILL_NODE_IP": NODE_IP,
            "FLOWMILL_KAFKA_BOOTSTRAP": self.kafka.bootstrap_servers,
            "FLOWMILL_REDIS_URL": self.redis.url,
            "FLOWMILL_IMAGE": self.images.flowmill if self.images else "",
            "FLOWMILL_REGISTRY": REGISTRY,
            "CONTAINER_RUNTIME_ENDPOINT": f"unix://{self.containerd_socket}",
        }

    # -- components --------------------------------------------------------------------------

    def _setup_network(self) -> None:
        # A link of its own holds the node's address: a bridge without ports, since kernels
        # without the dummy driver have bridges (CNI needs them anyway). The default route
        # points at it so that Service IPs, which kube-proxy's rules rewrite, have a route.
        # Nothing leaves the namespace: it has no link to the host.
        _delete_links(NODE_LINK, POD_BRIDGE)  # an earlier node's, in the same namespace
        for argv in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "add", NODE_LINK, "type", "bridge"],
            ["ip", "addr", "add", f"{NODE_IP}/32", "dev", NODE_LINK],
            ["ip", "link", "set", NODE_LINK, "up"],
            ["ip", "route", "add", "default", "dev", NODE_LINK],
        ):
            subprocess.run(argv, check=True, capture_output=True)
        (self.dir / "resolv.conf").write_text(
            "# No DNS server: pods use Service environment variables and ClusterIPs.\n"
            "nameserver 127.0.0.1\n"
        )

    def _start_services(self) -> None:
        self.kafka = NodeKafka(NODE_IP, self.dir / "kafka")
        self.redis = NodeRedis(NODE_IP)
        self.kafka.start()
        self.redis.start()

    def _start_control_plane(self) -> None:
        self.control_plane = KubeControlPlane(
            node=NodeAddress(NODE_IP, self.name), parent_dir=self.dir
        )
        self.control_plane.start()

    def _start_registry(self, binaries: _Binaries) -> None:
        root = self.dir / "registry"
        root.mkdir()
        # The blobs outlive the run, in the cache: pushing an unchanged image again then
        # uploads (and compresses) nothing.
        storage = cache_dir() / "registry"
        config = root / "config.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "version": 0.1,
                    "log": {"level": "warn"},
                    "storage": {"filesystem": {"rootdirectory": str(storage)}},
                    "http": {"addr": f"127.0.0.1:{REGISTRY.rsplit(':', 1)[1]}"},
                }
            )
        )
        self._spawn("registry", [str(binaries.registry), "serve", str(config)])
        self._wait("registry", lambda: http_ok(f"http://{REGISTRY}/v2/"))

    def _start_containerd(self, binaries: _Binaries) -> None:
        assert self.images is not None
        root = self.dir / "containerd"
        root.mkdir()
        cni_conf = self.dir / "cni" / "net.d"
        cni_conf.mkdir(parents=True)
        (cni_conf / "10-flowmill.conflist").write_text(json.dumps(self._cni_config(), indent=2))
        hosts = root / "certs.d"
        (hosts / REGISTRY).mkdir(parents=True)
        (hosts / REGISTRY / "hosts.toml").write_text(
            f'server = "http://{REGISTRY}"\n\n[host."http://{REGISTRY}"]\n'
            '  capabilities = ["pull", "resolve"]\n'
        )
        config = root / "config.toml"
        config.write_text(
            _containerd_config(root, self.containerd_socket, self.images.pause, cni_conf, hosts)
        )
        # containerd finds its shim on PATH; runc and the CNI plugins are configured.
        os.environ["PATH"] = f"{binaries.shim.parent}{os.pathsep}{os.environ.get('PATH', '')}"
        self._spawn("containerd", [str(binaries.containerd), f"--config={config}"])
        self._wait(
            "containerd",
            lambda: self._crictl("info", check=False).returncode == 0,
        )

    def _cni_config(self) -> dict[str, object]:
        assert self.state is not None
        return {
            "cniVersion": "1.0.0",
            "name": self.state.cni_network,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": POD_BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    # A pod reaching itself through its own Service.
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.dir / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def import_image(self, key: str) -> str:
        """Import the image images.env names `key` (one only some tests run, such as the
        trip-fraud agent's image) into the node's containerd; returns its name. ctr reads
        the whole archive (its layers shared with the flowmill image are not unpacked
        again): 21 s for the trip-fraud image on this machine, so only its test pays it."""
        assert self.images is not None
        name, archive = self.images.other(key)
        self._import_archives(find_binary("ctr"), (archive,), (name,))
        return name

    def _import_images(self, binaries: _Binaries) -> None:
        assert self.images is not None
        names = (self.images.flowmill, self.images.pause)
        self._import_archives(binaries.ctr, self.images.archives, names)

    def _import_archives(self, ctr: Path, archives: Sequence[Path], names: Sequence[str]) -> None:
        for archive in archives:
            subprocess.run(
                [
                    str(ctr),
                    f"--address={self.containerd_socket}",
                    "--namespace=k8s.io",
                    "images",
                    "import",
                    str(archive),
                ],
                check=True,
                capture_output=True,
                timeout=300,
            )
        listed = self._crictl("images", "--output=json").stdout
        tags = {t for image in json.loads(listed)["images"] for t in image.get("repoTags") or []}
        absent = [name for name in names if name not in tags and f"docker.io/{name}" not in tags]
        if absent:
            raise NodeError(f"images {absent} not in the archives {list(archives)}")

    def _start_scheduler(self, binaries: _Binaries) -> None:
        assert self.control_plane is not None
        (port,) = free_ports(1)
        kubeconfig = str(self.kubeconfig)
        self._spawn(
            "kube-scheduler",
            [
                str(binaries.scheduler),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--v={self.log_level}",
            ],
        )
        self._wait("kube-scheduler", lambda: https_ok(f"https://127.0.0.1:{port}/healthz"))

    def _start_kubelet(self, binaries: _Binaries) -> None:
        cp = self.control_plane
        assert cp is not None and cp.pki is not None and self.state is not None
        pki = cp.pki
        node_root = self.dir / "kubelet"
        node_root.mkdir()
        kubeconfig = cp.write_kubeconfig(node_root / "kubeconfig", pki.node_cert, pki.node_key)
        node_host.make_cgroup_root(self.state)
        port, healthz_port = free_ports(2)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            "tlsCertFile": str(pki.kubelet_serving_cert),
            "tlsPrivateKeyFile": str(pki.kubelet_serving_key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(pki.ca_cert)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            # cgroup v1 and no systemd here; one cgroup root per run keeps runs apart.
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{self.state.cgroup_name}",
            "failCgroupV1": False,
            "failSwapOn": False,
            # The machine lacks CAP_SYS_RESOURCE: a negative score would be refused.
            "oomScoreAdj": 0,
            "podLogsDir": str(self.dir / "pod-logs"),
            "resolvConf": str(self.dir / "resolv.conf"),
            "clusterDomain": "cluster.local",
            # A shared build machine's disk and memory are not the node's to guard; only
            # evict when really short, and never collect the locally imported images.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "shutdownGracePeriod": "0s",
            "nodeStatusUpdateFrequency": "2s",
        }
        config_path = node_root / "config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self._spawn(
            "kubelet",
            [
                str(binaries.kubelet),
                f"--config={config_path}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={node_root}",
                f"--cert-dir={node_root / 'pki'}",
                f"--hostname-override={self.name}",
                f"--node-ip={NODE_IP}",
                f"--v={self.log_level}",
            ],
        )
        self._wait("kubelet", lambda: http_ok(f"http://127.0.0.1:{healthz_port}/healthz"))

    def _start_proxy(self, binaries: _Binaries) -> None:
        cp = self.control_plane
        assert cp is not None and cp.pki is not None
        root = self.dir / "kube-proxy"
        root.mkdir()
        kubeconfig = cp.write_kubeconfig(root / "kubeconfig", cp.pki.proxy_cert, cp.pki.proxy_key)
        healthz_port, metrics_port = free_ports(2)
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "mode": "iptables",
            "clusterCIDR": POD_SUBNET,
            "hostnameOverride": self.name,
            "bindAddress": NODE_IP,
            "healthzBindAddress": f"127.0.0.1:{healthz_port}",
            "metricsBindAddress": f"127.0.0.1:{metrics_port}",
            "oomScoreAdj": 0,
            # nf_conntrack_max is not per namespace: leave the host's conntrack settings be.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }
        config_path = root / "config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self._spawn(
            "kube-proxy",
            [str(binaries.proxy), f"--config={config_path}", f"--v={self.log_level}"],
        )
        self._wait("kube-proxy", lambda: http_ok(f"http://127.0.0.1:{healthz_port}/healthz"))

    def _wait_node_ready(self) -> None:
        with self.api_client() as api_client:
            core = k8s_client.CoreV1Api(api_client)

            def ready() -> bool:
                self._check_alive()
                try:
                    node: Any = api_client.sanitize_for_serialization(core.read_node(self.name))
                except ApiException:
                    return False
                conditions = node.get("status", {}).get("conditions") or []
                ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
                # The node lifecycle controller lifts the not-ready taint once Ready.
                return ready and not node.get("spec", {}).get("taints")

            wait_for(ready, self.start_timeout, f"node {self.name} to be Ready and untainted")

    # -- teardown ----------------------------------------------------------------------------

    def _delete_all_pods(self, timeout: float = 60.0) -> None:
        """Delete every pod through the API and wait until the kubelet has removed them."""
        try:
            with self.api_client() as api_client:
                core = k8s_client.CoreV1Api(api_client)
                pods: Any = api_client.sanitize_for_serialization(
                    core.list_pod_for_all_namespaces()
                )
                for pod in pods["items"]:
                    meta = pod["metadata"]
                    try:
                        core.delete_namespaced_pod(
                            meta["name"], meta["namespace"], grace_period_seconds=1
                        )
                    except ApiException as e:
                        if e.status != 404:
                            raise
                wait_for(
                    lambda: not core.list_pod_for_all_namespaces().items,
                    timeout,
                    "the kubelet to remove every pod",
                )
        except (TimeoutError, ApiException, OSError) as e:
            # The CRI sweep that follows still removes them; say why it had to.
            print(f"[node] pods not removed through the API: {e}")

    # -- process plumbing --------------------------------------------------------------------

    def _timed(self, name: str, step: Callable[[], object]) -> None:
        t0 = time.monotonic()
        step()
        self.timings[name] = time.monotonic() - t0

    def _spawn(self, name: str, argv: Sequence[str]) -> None:
        log_path = self.dir / f"{name}.log"
        self._procs.append((name, spawn(argv, log_path, cwd=self.dir), log_path))

    def _wait(self, name: str, check: Callable[[], bool]) -> None:
        _, proc, log_path = next(p for p in self._procs if p[0] == name)
        wait_started(name, proc, log_path, check, self.start_timeout)

    def _running(self, name: str) -> bool:
        return any(n == name and p.poll() is None for n, p, _ in self._procs)

    def _stop_component(self, name: str) -> None:
        for entry in [p for p in self._procs if p[0] == name]:
            # The kubelet and containerd clean up their children on SIGTERM; give them time.
            terminate(entry[1], 20.0)
            self._procs.remove(entry)

    def _check_alive(self) -> None:
        for name, proc, log_path in self._procs:
            if proc.poll() is not None:
                raise NodeError(
                    f"{name} exited with code {proc.returncode}; last lines of {log_path}:\n"
                    f"{tail(log_path) or '(empty log)'}"
                )

    def _crictl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(find_binary("crictl")),
                f"--runtime-endpoint=unix://{self.containerd_socket}",
                f"--image-endpoint=unix://{self.containerd_socket}",
                "--timeout=20s",
                *args,
            ],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )


def require_own_netns(netns: str) -> None:
    """Fail unless this process runs inside the namespace scripts/cluster.sh created."""
    if not netns or not node_host.current_netns_is(netns):
        where = f"namespace {netns!r} (from ${NETNS_ENV})" if netns else f"no ${NETNS_ENV}"
        raise NodeError(
            "the Kubernetes node runs only inside a network namespace of its own, so that "
            "its iptables rules and addresses never touch the host; this process is in the "
            f"host's network namespace ({where}). Run the tests through the wrapper: "
            "`scripts/cluster.sh test -- <pytest args>` (what `make test` does), or start a "
            "cluster by hand with `scripts/cluster.sh up`."
        )


def _containerd_config(
    root: Path, socket: Path, pause_image: str, cni_conf: Path, registry_hosts: Path
) -> str:
    cri_runtime = "plugins.'io.containerd.cri.v1.runtime'"
    return f"""\
version = 3
root = '{root / "root"}'
state = '{root / "state"}'
temp = '{root / "tmp"}'
# Plugins that would use host paths: NRI listens on /var/run/nri, `opt` creates
# /opt/containerd, the image verifier reads /opt/containerd/image-verifier.
disabled_plugins = [
  'io.containerd.nri.v1.nri',
  'io.containerd.internal.v1.opt',
  'io.containerd.image-verifier.v1.bindir',
]

[grpc]
  address = '{socket}'

[ttrpc]
  address = '{socket}.ttrpc'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'

[plugins.'io.containerd.cri.v1.images'.registry]
  # hosts.toml per registry: the local one is plain HTTP.
  config_path = '{registry_hosts}'

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = '{pause_image}'

[{cri_runtime}]
  # No CAP_SYS_RESOURCE here: a negative oom_score_adj would be refused.
  restrict_oom_score_adj = true
  disable_apparmor = true
  # Pod network namespaces under the run directory rather than /var/run/netns.
  netns_mounts_under_state_dir = true

[{cri_runtime}.containerd]
  default_runtime_name = 'runc'

[{cri_runtime}.containerd.runtimes.runc]
  runtime_type = 'io.containerd.runc.v2'

[{cri_runtime}.containerd.runtimes.runc.options]
  BinaryName = '{RUNC}'
  # runc's state; the default is /run/containerd/runc.
  Root = '{root / "runc"}'
  SystemdCgroup = false

[{cri_runtime}.cni]
  bin_dirs = ['{CNI_BIN_DIR}']
  conf_dir = '{cni_conf}'
  max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
"""


def _delete_links(*names: str) -> None:
    for name in names:
        subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)


def _keep_logs(run_dir: Path, keep_in: str | None) -> None:
    if not keep_in:
        return
    target = Path(keep_in) / run_dir.name
    for log in run_dir.glob("**/*.log"):
        if log.is_file() and "pod-logs" not in log.parts:
            dest = target / log.relative_to(run_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, dest)
    print(f"[node] logs kept in {target}")
