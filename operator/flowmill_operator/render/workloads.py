"""Deployments for sources, steps and the API, and the API's Service.

Every pod gets the same hardening (the restricted Pod Security Standard), mounts the
Pipeline's ConfigMap read-only, and carries the spec hash so that a spec change rolls it.
"""

from __future__ import annotations

import posixpath

from flowmill.spec import (
    API_PORT,
    ENV_API_KEYS_DIR,
    ENV_BOOTSTRAP_SERVERS,
    FAUST_CODE_MOUNT,
    POD_LISTEN_ADDRESS,
    WORKER_METRICS_PORT,
    WORKING_DIR,
    SourceSpec,
    StepSpec,
    api_args,
    worker_args,
)
from flowmill.spec.launch import (
    ENV_API_PROMETHEUS_URL,
    TERMINATION_GRACE_PERIOD_S,
    http_header_env,
    termination_grace_period,
)
from flowmill.spec.pipeline import ApiSpec
from flowmill_operator import naming
from flowmill_operator.render.context import Manifest, RenderContext
from flowmill_operator.render.kafka_security import kafka_security_env, kafka_tls_volume
from flowmill_operator.render.pod_template import TemplateSource, apply_template
from flowmill_operator.render.scaling import StepScale

# The image's user (Dockerfile: useradd --uid 10001); set explicitly so runAsNonRoot can
# be verified by the kubelet even if an image names its user by name.
RUN_AS = 10001
DEFAULT_REQUESTS = {"cpu": "100m", "memory": "256Mi"}
DEFAULT_LIMITS = {"memory": "512Mi"}
API_KEYS_MOUNT = "/var/run/flowmill/api-keys"

POD_SECURITY_CONTEXT: Manifest = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS,
    "runAsGroup": RUN_AS,
    "fsGroup": RUN_AS,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: Manifest = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def source_deployment(ctx: RenderContext, source: SourceSpec) -> Manifest:
    container = _container(
        ctx,
        naming.WORKER_CONTAINER,
        worker_args(naming.PIPELINE_FILE, "source", source.name),
        port_name="metrics",
        port=WORKER_METRICS_PORT,
        env=_kafka_env(ctx) + kafka_security_env(ctx) + _http_header_env(source),
        mounts=kafka_tls_volume(ctx)[1],
    )
    # One poller or replayer per source: a second one would ingest every event twice, and
    # Recreate keeps a rollout from briefly running two.
    deployment = _deployment(
        ctx,
        naming.source_deployment(ctx.name, source.name),
        "source",
        source.name,
        container,
        replicas=0 if ctx.pipeline.spec.paused else 1,
        strategy={"type": "Recreate"},
        volumes=kafka_tls_volume(ctx)[0],
    )
    index = ctx.pipeline.spec.sources.index(source)
    return _with_template(ctx, deployment, source, f"spec.sources[{index}].template")


def step_deployment(ctx: RenderContext, step: StepSpec, scale: StepScale) -> Manifest:
    env = _kafka_env(ctx)
    env_from: list[Manifest] = []
    volumes: list[Manifest] = []
    mounts: list[Manifest] = []
    if step.sink and step.sink.redis:
        env += ctx.redis_env()
        volumes, mounts = ctx.redis_tls_volume()
    env += kafka_security_env(ctx)
    kafka_volumes, kafka_mounts = kafka_tls_volume(ctx)
    volumes, mounts = volumes + kafka_volumes, mounts + kafka_mounts
    parquet = step.sink.parquet if step.sink else None
    if parquet is not None and parquet.s3 is not None and parquet.s3.credentials_secret:
        env_from.append({"secretRef": {"name": parquet.s3.credentials_secret}})
    if parquet is not None and parquet.path:
        # The root filesystem is read-only, so a local lake needs a writable volume; an
        # emptyDir lives as long as the pod, which is why docs/operator.md says use s3.
        volumes.append({"name": "lake", "emptyDir": {}})
        mounts.append({"name": "lake", "mountPath": posixpath.join(WORKING_DIR, parquet.path)})
    code = step.faust.code if step.faust else None
    code_path = None
    if code is not None and code.config_map:
        # The agent's code as files on the import path (faust.code); read-only like the spec.
        volumes.append({"name": "faust-code", "configMap": {"name": code.config_map}})
        mounts.append({"name": "faust-code", "mountPath": FAUST_CODE_MOUNT, "readOnly": True})
        code_path = FAUST_CODE_MOUNT
    container = _container(
        ctx,
        naming.WORKER_CONTAINER,
        worker_args(naming.PIPELINE_FILE, "step", step.name, code_path=code_path),
        port_name="metrics",
        port=WORKER_METRICS_PORT,
        env=env,
        env_from=env_from,
        mounts=mounts,
    )
    deployment = _deployment(
        ctx,
        naming.step_deployment(ctx.name, step.name),
        "step",
        step.name,
        container,
        # Left out when an autoscaler owns the count: applying it would fight the HPA.
        replicas=None if scale.autoscaler else scale.replicas,
        volumes=volumes,
    )
    index = ctx.pipeline.spec.steps.index(step)
    return _with_template(ctx, deployment, step, f"spec.steps[{index}].template")


def api_deployment(ctx: RenderContext) -> Manifest:
    api = ctx.pipeline.spec.api
    volumes, mounts = ctx.redis_tls_volume()
    # The health view reads every topic's end offsets and the dead letters: the API
    # reaches Kafka as the workers do, with their security, credentials as secretKeyRefs.
    env = _kafka_env(ctx) + kafka_security_env(ctx) + ctx.redis_env()
    kafka_volumes, kafka_mounts = kafka_tls_volume(ctx)
    volumes, mounts = volumes + kafka_volumes, mounts + kafka_mounts
    if ctx.settings.prometheus_url:
        # ... and the workers' own numbers from the platform's Prometheus.
        env.append({"name": ENV_API_PROMETHEUS_URL, "value": ctx.settings.prometheus_url})
    if api.api_keys_secret:
        volumes.append({"name": "api-keys", "secret": {"secretName": api.api_keys_secret}})
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_MOUNT, "readOnly": True})
        env.append({"name": ENV_API_KEYS_DIR, "value": API_KEYS_MOUNT})
    limits = ctx.settings
    args = api_args(
        naming.PIPELINE_FILE,
        port=API_PORT,
        host=POD_LISTEN_ADDRESS,
        trusted_proxies=api.trusted_proxies,
        header_timeout_s=limits.api_header_timeout_seconds,
        max_connections=limits.api_max_connections,
        stop_grace_s=limits.api_stop_grace_seconds,
    )
    container = _container(
        ctx,
        "api",
        args,
        port_name="http",
        port=API_PORT,
        env=env,
        mounts=mounts,
    )
    deployment = _deployment(
        ctx,
        naming.api_deployment(ctx.name),
        "api",
        None,
        container,
        replicas=None if api.autoscaling else api.replicas,
        volumes=volumes,
        termination_grace_s=termination_grace_period(limits.api_stop_grace_seconds),
    )
    return _with_template(ctx, deployment, api, "spec.api.template")


def _with_template(
    ctx: RenderContext, deployment: Manifest, part: SourceSpec | StepSpec | ApiSpec, path: str
) -> Manifest:
    spec = ctx.pipeline.spec
    source = TemplateSource(part.template, path, spec.template)
    apply_template(deployment, spec.pod_template(part), source)
    return deployment


def api_service(ctx: RenderContext) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ctx.metadata(naming.api_deployment(ctx.name), "api"),
        "spec": {
            "type": ctx.pipeline.spec.api.service_type,
            "selector": naming.selector_labels(ctx.name, "api"),
            "ports": [{"name": "http", "port": API_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _kafka_env(ctx: RenderContext) -> list[Manifest]:
    return [{"name": ENV_BOOTSTRAP_SERVERS, "value": ctx.bootstrap_servers()}]


def _http_header_env(source: SourceSpec) -> list[Manifest]:
    """httpPoll.headersFrom: each header's value from its Secret, never in the spec."""
    poll = source.http_poll
    if poll is None or not poll.headers_from:
        return []
    return [
        {
            "name": http_header_env(source.name, header),
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
        }
        for header, ref in poll.headers_from.items()
    ]


def _container(
    ctx: RenderContext,
    name: str,
    args: list[str],
    *,
    port_name: str,
    port: int,
    env: list[Manifest],
    env_from: list[Manifest] | None = None,
    mounts: list[Manifest] | None = None,
) -> Manifest:
    container: Manifest = {
        "name": name,
        "image": ctx.image,
        "imagePullPolicy": ctx.settings.image_pull_policy,
        "command": ["flowmill"],
        "args": args,
        "ports": [{"name": port_name, "containerPort": port, "protocol": "TCP"}],
        "env": env,
        # A template's resources replace these (render/pod_template.py).
        "resources": {"requests": DEFAULT_REQUESTS, "limits": DEFAULT_LIMITS},
        # /healthz says the process loop is alive, /readyz that it consumes (or serves).
        # The startup probe holds the liveness probe off while Python imports (numpy,
        # pyarrow, aiokafka take seconds on a busy node): up to 2 minutes to answer once,
        # instead of a restart loop for a pod that was only slow to start.
        "startupProbe": _probe("/healthz", port_name, period=2, failures=60, delay=0),
        "livenessProbe": _probe("/healthz", port_name, period=10, failures=3),
        "readinessProbe": _probe("/readyz", port_name, period=5, failures=2),
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        "volumeMounts": [
            {"name": "spec", "mountPath": naming.CONFIG_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            *(mounts or []),
        ],
    }
    if env_from:
        container["envFrom"] = env_from
    return container


def _probe(path: str, port: str, *, period: int, failures: int, delay: int = 5) -> Manifest:
    probe: Manifest = {"httpGet": {"path": path, "port": port}}
    # The apiserver drops a zero initialDelaySeconds (its default), so rendering one would
    # read back as drift on every resync.
    if delay:
        probe["initialDelaySeconds"] = delay
    return {**probe, "periodSeconds": period, "timeoutSeconds": 2, "failureThreshold": failures}


def _deployment(
    ctx: RenderContext,
    name: str,
    component: str,
    child: str | None,
    container: Manifest,
    *,
    replicas: int | None,
    strategy: Manifest | None = None,
    volumes: list[Manifest] | None = None,
    termination_grace_s: int = TERMINATION_GRACE_PERIOD_S,
) -> Manifest:
    port = container["ports"][0]["containerPort"]
    spec: Manifest = {}
    if replicas is not None:
        spec["replicas"] = replicas
    spec["revisionHistoryLimit"] = 3
    spec["selector"] = {"matchLabels": naming.selector_labels(ctx.name, component, child)}
    if strategy:
        spec["strategy"] = strategy
    spec["template"] = {
        "metadata": {
            "labels": naming.labels(ctx.name, component, child),
            "annotations": {
                naming.SPEC_HASH_ANNOTATION: ctx.spec_hash,
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(port),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": {
            # Workers and the API never call the Kubernetes API.
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": POD_SECURITY_CONTEXT,
            "terminationGracePeriodSeconds": termination_grace_s,
            "containers": [container],
            "volumes": [
                {"name": "spec", "configMap": {"name": naming.config_map(ctx.name)}},
                {"name": "tmp", "emptyDir": {}},
                *(volumes or []),
            ],
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": ctx.metadata(name, component, child),
        "spec": spec,
    }
