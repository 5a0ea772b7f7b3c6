"""A real Kubernetes control plane for tests, in the spirit of controller-runtime's envtest.

etcd, kube-apiserver and kube-controller-manager run as local processes on loopback ports,
with freshly generated certificates. There is no scheduler and no kubelet: Deployments get
ReplicaSets and ReplicaSets get Pods, but Pods never run. That is enough to test what an
operator writes, plus the controllers (garbage collection, HPA) that act on it.

Given a `NodeAddress`, the same control plane serves a real node (tests/harness/node.py): the
apiserver listens on and advertises the node's address so that pods reach it through the
`kubernetes` Service, authorizes kubelets with the Node authorizer, and every controller runs.

The binaries come from scripts/provision.sh; a missing one raises ComponentMissing, which
tests must report as a failure, not a skip.
"""

from __future__ import annotations

import atexit
import base64
import datetime as dt
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from flowmill.local import find_binary
from flowmill.local.ports import StartStop, free_ports, spawn, tail, terminate
from tests.harness.waiting import wait_for

SERVICE_CIDR = "10.0.0.0/24"
# The first address of SERVICE_CIDR: the in-cluster `kubernetes` Service, which the serving
# certificate has to cover.
SERVICE_IP = "10.0.0.1"
# The identity the apiserver proxies to aggregated APIs with (its front-proxy client cert).
FRONT_PROXY_CLIENT = "front-proxy-client"

CONTROLLERS = (
    "garbage-collector-controller",
    "deployment-controller",
    "replicaset-controller",
    "horizontal-pod-autoscaler-controller",
    # A replay's reset Job (spec.replay): its pods, and its Complete/Failed conditions
    # once the stand-in kubelet reports them finished.
    "job-controller",
    "serviceaccount-token-controller",
    "serviceaccount-controller",
    "namespace-controller",
    # Publishes kube-root-ca.crt into every namespace, as a real cluster does; workloads
    # that mount a projected service-account token expect it.
    "root-ca-certificate-publisher-controller",
)

# A node needs the controllers a real cluster runs: endpoint slices for Services, node
# lifecycle to lift the not-ready taint, jobs, cluster-role aggregation for charts' roles, ...
NODE_CONTROLLERS = ("*",)


@dataclass(frozen=True)
class NodeAddress:
    """Where the control plane of a real node listens: an address pods can route to, which
    exists only inside the run's network namespace, and the name the kubelet registers."""

    ip: str
    name: str


class KubeControlPlaneError(RuntimeError):
    """A control-plane component failed to start; the message carries the tail of its log."""


class KubeControlPlane(StartStop):
    """etcd + kube-apiserver + kube-controller-manager on loopback, torn down by stop().

    Use as a context manager, or call start() and stop(). After start(): `kubeconfig` is an
    admin (system:masters) kubeconfig file, `server` the apiserver's https URL, and
    api_client() a kubernetes.client.ApiClient for it.
    """

    def __init__(
        self,
        *,
        hpa_sync_period: str = "5s",
        start_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        keep_dir: bool | None = None,
        node: NodeAddress | None = None,
        parent_dir: Path | None = None,
    ) -> None:
        self.node = node
        self.parent_dir = parent_dir
        self.hpa_sync_period = hpa_sync_period
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        # Keeping the directory leaves the component logs behind for a post-mortem.
        self.keep_dir = (
            keep_dir if keep_dir is not None else bool(os.environ.get("FLOWMILL_KEEP_KUBE_DIR"))
        )
        self.dir: Path | None = None
        self.kubeconfig: Path | None = None
        self.server: str | None = None
        self.etcd_url: str | None = None
        self.pki: _Pki | None = None
        self.startup_seconds: float | None = None
        self._procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self._atexit_registered = False
        self._apiserver_argv: list[str] = []
        self._apiserver_ready: Callable[[], bool] | None = None
        self._apiserver_slot = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> KubeControlPlane:
        if self.dir is not None:
            raise RuntimeError("KubeControlPlane already started")
        # Look every binary up before creating anything, so a missing one fails cleanly.
        etcd = find_binary("etcd")
        apiserver = find_binary("kube-apiserver")
        controller_manager = find_binary("kube-controller-manager")
        began = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="flowmill-kube-", dir=self.parent_dir))
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        timings: list[str] = []

        def timed(name: str, step: Callable[[], object]) -> None:
            t0 = time.monotonic()
            step()
            timings.append(f"{name} {time.monotonic() - t0:.1f}s")

        try:
            pki = self.pki = _Pki(self.dir / "pki", self.node)
            timings.append(f"certs {time.monotonic() - began:.1f}s")
            timed("etcd", lambda: self._start_etcd(etcd))
            timed("kube-apiserver", lambda: self._start_apiserver(apiserver, pki))
            timed(
                "kube-controller-manager",
                lambda: self._start_controller_manager(controller_manager, pki),
            )
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        print(
            f"[kube] control plane up in {self.startup_seconds:.1f}s at {self.server} "
            f"({', '.join(timings)})"
        )
        return self

    def stop_component(self, name: str) -> None:
        """Stop one component ahead of the rest (a node's teardown stops the controllers
        first, so that nothing recreates the pods it deletes)."""
        for entry in [p for p in self._procs if p[0] == name]:
            terminate(entry[1], self.stop_timeout)
            self._procs.remove(entry)

    def stop(self) -> None:
        # Reverse order: the controller-manager and apiserver complain loudly (and slowly)
        # when what they depend on disappears first.
        for _, proc, _ in reversed(self._procs):
            terminate(proc, self.stop_timeout)
        self._procs.clear()
        if self.dir is not None:
            if self.keep_dir:
                print(f"[kube] kept {self.dir}")
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False

    # -- clients -----------------------------------------------------------------------------

    def write_kubeconfig(self, path: Path, cert: Path, key: Path) -> Path:
        """A kubeconfig for this apiserver with another client identity (a kubelet's)."""
        if self.server is None or self.pki is None:
            raise RuntimeError("KubeControlPlane is not started")
        path.write_text(_kubeconfig(self.server, self.pki.ca_cert, cert, key))
        path.chmod(0o600)
        return path

    def api_client(self) -> k8s_client.ApiClient:
        """A new ApiClient authenticated as the admin; close it (or use `with`) when done."""
        if self.kubeconfig is None:
            raise RuntimeError("KubeControlPlane is not started")
        return k8s_config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60.0) -> str:
        """Run the provisioned kubectl against this control plane; returns stdout."""
        if self.kubeconfig is None:
            raise RuntimeError("KubeControlPlane is not started")
        result = subprocess.run(
            [str(find_binary("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, result.args, result.stdout, result.stderr
            )
        return result.stdout

    def install_crd(self, crd: dict[str, Any] | Path, timeout: float = 30.0) -> dict[str, Any]:
        """Create (or replace) a CustomResourceDefinition and wait until it is Established."""
        # Any: the client serialises plain dicts as they are, whatever its stubs say.
        manifest: Any = yaml.safe_load(crd.read_text()) if isinstance(crd, Path) else crd
        name = manifest["metadata"]["name"]
        with self.api_client() as api_client:
            ext = k8s_client.ApiextensionsV1Api(api_client)
            try:
                ext.create_custom_resource_definition(body=manifest)
            except ApiException as e:
                if e.status != 409:
                    raise
                current = api_client.sanitize_for_serialization(
                    ext.read_custom_resource_definition(name)
                )
                body: Any = {**manifest, "metadata": {**manifest["metadata"]}}
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                ext.replace_custom_resource_definition(name, body=body)

            def established() -> dict[str, Any] | None:
                got = api_client.sanitize_for_serialization(
                    ext.read_custom_resource_definition(name)
                )
                conditions = (got.get("status") or {}).get("conditions") or []
                ok = any(c["type"] == "Established" and c["status"] == "True" for c in conditions)
                return got if ok else None

            return wait_for(established, timeout, f"CRD {name} to be Established")

    # -- components --------------------------------------------------------------------------

    def _start_etcd(self, binary: Path) -> None:
        assert self.dir is not None
        client_port, peer_port = free_ports(2)
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            [
                str(binary),
                "--name=flowmill-test",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=flowmill-test={peer_url}",
                "--initial-cluster-state=new",
                # Throwaway data: skipping fsync is what makes etcd (and so the apiserver's
                # bootstrap writes) fast on slow disks. envtest does the same.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as resp:
                    return json.load(resp).get("health") == "true"
            except (OSError, ValueError):
                return False

        self._wait("etcd", healthy)

    def _start_apiserver(self, binary: Path, pki: _Pki) -> None:
        assert self.dir is not None
        (port,) = free_ports(1)
        address = self.node.ip if self.node else "127.0.0.1"
        self.server = f"https://{address}:{port}"
        cert_dir = self.dir / "apiserver"
        cert_dir.mkdir()
        node_flags: list[str] = []
        if self.node:
            node_flags = [
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                # `kubectl logs` and `exec` go to the kubelet at the node's own address.
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={pki.kubelet_client_cert}",
                f"--kubelet-client-key={pki.kubelet_client_key}",
                # The aggregation layer, for APIServices such as prometheus-adapter's
                # external.metrics.k8s.io: the apiserver proxies to them as the front
                # proxy, naming the user in headers that the front-proxy CA vouches for.
                f"--requestheader-client-ca-file={pki.front_proxy_ca}",
                f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki.front_proxy_client_cert}",
                f"--proxy-client-key-file={pki.front_proxy_client_key}",
                # To the Service's endpoint, not its ClusterIP: a routing decision the
                # apiserver then makes without kube-proxy.
                "--enable-aggregator-routing=true",
            ]
        self._apiserver_argv = [
            str(binary),
            f"--etcd-servers={self.etcd_url}",
            f"--secure-port={port}",
            f"--bind-address={address}",
            f"--advertise-address={address}",
            f"--cert-dir={cert_dir}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            *(node_flags or ["--authorization-mode=RBAC"]),
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--service-account-issuer={self.server}",
            f"--service-account-key-file={pki.sa_public}",
            f"--service-account-signing-key-file={pki.sa_private}",
            "--allow-privileged=true",
            "--v=1",
        ]
        self._spawn("kube-apiserver", self._apiserver_argv)
        self.kubeconfig = self.dir / "admin.kubeconfig"
        self.kubeconfig.write_text(
            _kubeconfig(self.server, pki.ca_cert, pki.admin_cert, pki.admin_key)
        )
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))

        def ready() -> bool:
            try:
                with urllib.request.urlopen(
                    f"{self.server}/readyz", timeout=2, context=context
                ) as resp:
                    return resp.status == 200
            except (OSError, urllib.error.HTTPError):
                return False

        self._apiserver_ready = ready
        self._wait("kube-apiserver", ready)

    def kill_apiserver(self) -> None:
        """SIGKILL the apiserver, as a crashed or OOM-killed control-plane node would lose
        it; etcd (and so every object) and the controllers stay. restart_apiserver()
        brings it back on the same address and certificates."""
        names = [p[0] for p in self._procs]
        if "kube-apiserver" not in names:
            raise RuntimeError("the apiserver is not running")
        self._apiserver_slot = names.index("kube-apiserver")
        _, proc, _ = self._procs.pop(self._apiserver_slot)
        proc.kill()
        proc.wait(self.stop_timeout)

    def restart_apiserver(self) -> None:
        """Start the apiserver killed by kill_apiserver() again, as it was, and wait until
        it is ready. Clients reconnect to the same URL with the same credentials."""
        if self.dir is None or self._apiserver_ready is None:
            raise RuntimeError("KubeControlPlane is not started")
        if any(p[0] == "kube-apiserver" for p in self._procs):
            raise RuntimeError("the apiserver is running; kill_apiserver() first")
        log_path = self.dir / "kube-apiserver.log"  # appended to: both runs in one log
        proc = spawn(self._apiserver_argv, log_path, cwd=self.dir)
        # Back in its place, so that stop() still stops the controllers before it.
        self._procs.insert(self._apiserver_slot, ("kube-apiserver", proc, log_path))
        self._wait("kube-apiserver", self._apiserver_ready)

    def _start_controller_manager(self, binary: Path, pki: _Pki) -> None:
        assert self.dir is not None and self.kubeconfig is not None
        (port,) = free_ports(1)
        # The admin identity is used throughout: the bootstrap role for
        # system:kube-controller-manager only covers the core loops and expects per-controller
        # service-account credentials, which --use-service-account-credentials=false turns off.
        kubeconfig = str(self.kubeconfig)
        self._spawn(
            "kube-controller-manager",
            [
                str(binary),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                f"--controllers={','.join(NODE_CONTROLLERS if self.node else CONTROLLERS)}",
                f"--service-account-private-key-file={pki.sa_private}",
                f"--root-ca-file={pki.ca_cert}",
                "--use-service-account-credentials=false",
                f"--horizontal-pod-autoscaler-sync-period={self.hpa_sync_period}",
                f"--secure-port={port}",
                "--bind-address=127.0.0.1",
                f"--cert-dir={self.dir / 'controller-manager'}",
                "--v=1",
            ],
        )
        # /healthz only says the process serves; the `default` ServiceAccount appearing proves
        # the controllers have synced their informers and act on the apiserver.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        api_client = self.api_client()
        core = k8s_client.CoreV1Api(api_client)

        def running() -> bool:
            try:
                with urllib.request.urlopen(
                    f"https://127.0.0.1:{port}/healthz", timeout=2, context=insecure
                ) as resp:
                    if resp.status != 200:
                        return False
                core.read_namespaced_service_account("default", "default")
                return True
            except (OSError, urllib.error.HTTPError, ApiException):
                return False

        try:
            self._wait("kube-controller-manager", running)
        finally:
            api_client.close()

    # -- process plumbing --------------------------------------------------------------------

    def _spawn(self, name: str, argv: Sequence[str]) -> None:
        assert self.dir is not None
        log_path = self.dir / f"{name}.log"
        # spawn() also stops the process at exit, or when Python dies without running atexit.
        self._procs.append((name, spawn(argv, log_path, cwd=self.dir), log_path))

    def _wait(self, name: str, check: Callable[[], bool]) -> None:
        _, proc, log_path = next(p for p in self._procs if p[0] == name)
        wait_started(name, proc, log_path, check, self.start_timeout)


def wait_started(
    name: str,
    proc: subprocess.Popen[bytes],
    log_path: Path,
    check: Callable[[], bool],
    timeout: float,
) -> None:
    """Poll check() until it passes; fail with the tail of the log if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise KubeControlPlaneError(
                f"{name} exited with code {proc.returncode} during startup; "
                f"last lines of {log_path}:\n{tail(log_path) or '(empty log)'}"
            )
        if check():
            return
        time.sleep(0.1)
    raise KubeControlPlaneError(
        f"{name} not ready after {timeout:.0f}s; "
        f"last lines of {log_path}:\n{tail(log_path) or '(empty log)'}"
    )


def _kubeconfig(server: str, ca: Path, cert: Path, key: Path) -> str:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "flowmill-test",
                "cluster": {"server": server, "certificate-authority-data": b64(ca)},
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)},
            }
        ],
        "contexts": [
            {"name": "flowmill-test", "context": {"cluster": "flowmill-test", "user": "admin"}}
        ],
        "current-context": "flowmill-test",
    }
    return yaml.safe_dump(config, sort_keys=False)


class _Pki:
    """CA, apiserver serving cert, admin client cert and service-account key pair, as files;
    for a node also the kubelet's, kube-proxy's and the apiserver's kubelet-client certs."""

    def __init__(self, directory: Path, node: NodeAddress | None = None) -> None:
        directory.mkdir(parents=True)
        self.dir = directory
        # EC keys for the certificates: generating RSA keys is the slow part of a start-up.
        # The service-account key stays RSA because tokens are signed with RS256.
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flowmill-test-ca")])
        ca_cert = (
            _builder(ca_name, ca_name, ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_cert = self._write_cert("ca.crt", ca_cert)

        def leaf(
            subject: x509.Name,
            usage: x509.ObjectIdentifier,
            sans: list[x509.GeneralName] | None = None,
        ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (
                _builder(subject, ca_name, key.public_key())
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                    critical=False,
                )
            )
            if sans:
                builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            return builder.sign(ca_key, hashes.SHA256()), key

        serving, serving_key = leaf(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
            ExtendedKeyUsageOID.SERVER_AUTH,
            [
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address(SERVICE_IP)),
                *([x509.IPAddress(ipaddress.ip_address(node.ip))] if node else []),
                x509.DNSName("localhost"),
                x509.DNSName("kubernetes"),
                x509.DNSName("kubernetes.default"),
                x509.DNSName("kubernetes.default.svc"),
                x509.DNSName("kubernetes.default.svc.cluster.local"),
            ],
        )
        self.serving_cert = self._write_cert("apiserver.crt", serving)
        self.serving_key = self._write_key("apiserver.key", serving_key)

        admin, admin_key = leaf(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "admin"),
                ]
            ),
            ExtendedKeyUsageOID.CLIENT_AUTH,
        )
        self.admin_cert = self._write_cert("admin.crt", admin)
        self.admin_key = self._write_key("admin.key", admin_key)

        def client(
            name: str, common_name: str, organization: str | None = None
        ) -> tuple[Path, Path]:
            attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
            if organization:
                attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
            cert, key = leaf(x509.Name(attributes), ExtendedKeyUsageOID.CLIENT_AUTH)
            return self._write_cert(f"{name}.crt", cert), self._write_key(f"{name}.key", key)

        if node:
            # The identities a real cluster uses, so that the Node authorizer and the
            # bootstrap RBAC roles (system:node-proxier) decide what each may do.
            self.node_cert, self.node_key = client(
                "node", f"system:node:{node.name}", "system:nodes"
            )
            self.proxy_cert, self.proxy_key = client("proxy", "system:kube-proxy")
            self.kubelet_client_cert, self.kubelet_client_key = client(
                "kubelet-client", "kube-apiserver-kubelet-client", "system:masters"
            )
            # The kubelet's serving cert, so that its API (logs, exec) is on the cluster CA.
            serving_kubelet, serving_kubelet_key = leaf(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node.name)]),
                ExtendedKeyUsageOID.SERVER_AUTH,
                [x509.IPAddress(ipaddress.ip_address(node.ip)), x509.DNSName(node.name)],
            )
            self.kubelet_serving_cert = self._write_cert("kubelet.crt", serving_kubelet)
            self.kubelet_serving_key = self._write_key("kubelet.key", serving_kubelet_key)
            # A CA of its own for the front proxy, as kubeadm makes one: extension
            # apiservers trust request headers only from clients it signed.
            self.front_proxy_ca, self.front_proxy_client_cert, self.front_proxy_client_key = (
                self._front_proxy()
            )

        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.sa_private = self._write_key("sa.key", sa_key)
        self.sa_public = self.dir / "sa.pub"
        self.sa_public.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def _front_proxy(self) -> tuple[Path, Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flowmill-front-proxy-ca")])
        ca = (
            _builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        client_key = ec.generate_private_key(ec.SECP256R1())
        client = (
            _builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, FRONT_PROXY_CLIENT)]),
                name,
                client_key.public_key(),
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(key, hashes.SHA256())
        )
        return (
            self._write_cert("front-proxy-ca.crt", ca),
            self._write_cert("front-proxy-client.crt", client),
            self._write_key("front-proxy-client.key", client_key),
        )

    def _write_cert(self, name: str, cert: x509.Certificate) -> Path:
        path = self.dir / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def _write_key(self, name: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> Path:
        path = self.dir / name
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        return path


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # Backdated so that small clock differences never make a fresh cert "not yet valid".
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )
