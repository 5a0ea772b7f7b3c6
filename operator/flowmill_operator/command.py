"""`flowmill render` and `flowmill operator`: argument parsing only, so `flowmill --help`
stays fast; the handlers import the operator when they run."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from flowmill.spec.launch import API_HEADER_TIMEOUT_S, API_MAX_CONNECTIONS, STOP_GRACE_S

if TYPE_CHECKING:  # the settings module is light, but keep --help's imports minimal
    from flowmill_operator.settings import RenderSettings

ENV_HELP = "defaults come from FLOWMILL_* environment variables (see docs/operator.md)"


def _render_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="image of workers and API for Pipelines without spec.image")
    parser.add_argument(
        "--strimzi-api-version",
        metavar="GROUP/VERSION",
        help="KafkaTopic apiVersion: kafka.strimzi.io/v1 (Strimzi >= 0.49) or kafka.strimzi.io/v1beta2",
    )
    parser.add_argument(
        "--topic-management",
        choices=["auto", "strimzi", "admin", "unmanaged"],
        help="for Pipelines without spec.kafka.topicManagement: KafkaTopics (strimzi), the "
        "Kafka admin API (admin), or neither; auto: strimzi when a Strimzi cluster is named",
    )
    parser.add_argument(
        "--autoscaler", choices=["hpa", "keda"], help="for steps whose autoscaling sets no kind"
    )
    parser.add_argument(
        "--hpa-scale-to-zero",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the cluster enables the HPAScaleToZero feature gate: HPAs may keep minReplicas 0",
    )
    parser.add_argument(
        "--pdb",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="PodDisruptionBudgets for steps and the API",
    )
    api = parser.add_argument_group("the APIs' connections", "for every Pipeline's API")
    api.add_argument(
        "--api-header-timeout",
        type=float,
        metavar="SECONDS",
        help="close a connection whose request headers are not complete this long "
        f"(default {API_HEADER_TIMEOUT_S:g})",
    )
    api.add_argument(
        "--api-max-connections",
        type=int,
        metavar="N",
        help=f"open connections per API pod; beyond, newcomers get 503 (default {API_MAX_CONNECTIONS})",
    )
    api.add_argument(
        "--api-stop-grace",
        type=float,
        metavar="SECONDS",
        help=f"after SIGTERM, how long open requests and streams may last (default {STOP_GRACE_S})",
    )
    api.add_argument(
        "--prometheus-url",
        metavar="URL",
        help="a Prometheus scraping the pods: the health view's source of rates, lag, restarts",
    )
    defaults = parser.add_argument_group(
        "platform defaults", "for Pipelines whose spec.kafka or spec.redis is empty"
    )
    defaults.add_argument("--default-kafka-cluster", metavar="NAME", help="Strimzi Kafka resource")
    defaults.add_argument("--default-kafka-namespace", metavar="NS", help="its namespace")
    defaults.add_argument("--default-bootstrap-servers", metavar="HOST:PORT")
    defaults.add_argument("--default-redis-url", metavar="URL", help="without a password")
    defaults.add_argument(
        "--default-redis-secret",
        metavar="NAME",
        help="Secret (in each Pipeline's namespace) whose key `url` holds the Redis URL",
    )


def _render_settings(args: argparse.Namespace) -> RenderSettings:
    """The environment's render settings with the flags that were given over them."""
    from flowmill_operator.settings import RenderSettings

    return RenderSettings.from_env(
        image=args.image,
        strimzi_api_version=args.strimzi_api_version,
        topic_management=args.topic_management,
        autoscaler=args.autoscaler,
        hpa_scale_to_zero=args.hpa_scale_to_zero,
        pod_disruption_budgets=args.pdb,
        default_kafka_cluster=args.default_kafka_cluster,
        default_kafka_namespace=args.default_kafka_namespace,
        default_bootstrap_servers=args.default_bootstrap_servers,
        default_redis_url=args.default_redis_url,
        default_redis_secret=args.default_redis_secret,
        api_header_timeout_seconds=args.api_header_timeout,
        api_max_connections=args.api_max_connections,
        api_stop_grace_seconds=args.api_stop_grace,
        prometheus_url=args.prometheus_url,
        pod_monitor=True if getattr(args, "pod_monitor", False) else None,
    )


def _render(args: argparse.Namespace) -> int:
    from flowmill.manifest import PipelineInvalid, load_pipelines
    from flowmill_operator.render import RenderError, render, to_yaml

    try:
        settings = _render_settings(args)
    except ValueError as err:
        print(f"flowmill render: {err}", file=sys.stderr)
        return 2
    try:
        pipelines = load_pipelines(args.file)
    except PipelineInvalid as err:
        print(err, file=sys.stderr)
        return 1
    except OSError as err:
        print(f"{args.file}: {err.strerror}", file=sys.stderr)
        return 1
    manifests = []
    for pipeline in pipelines:
        try:
            rendered = render(pipeline, settings, namespace=args.namespace)
        except RenderError as err:
            print(f"{args.file}: Pipeline {pipeline.name} cannot run in a cluster", file=sys.stderr)
            for error in err.errors:
                print(f"  {error}", file=sys.stderr)
            return 1
        manifests += rendered.manifests
    sys.stdout.write(to_yaml(manifests))
    return 0


def configure_render(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print, as multi-document YAML, exactly the children the operator applies for each "
        f"Pipeline in FILE (owner references aside, which need the live object); {ENV_HELP}."
    )
    parser.add_argument("file", metavar="FILE")
    parser.add_argument(
        "-n", "--namespace", help="namespace to render into (default: metadata.namespace)"
    )
    _render_flags(parser)
    parser.add_argument(
        "--pod-monitor",
        action="store_true",
        help="include the PodMonitor the operator adds when the cluster serves the CRD",
    )
    parser.set_defaults(handler=_render)


def _operator(args: argparse.Namespace) -> int:
    import asyncio

    import kopf

    from flowmill import redact
    from flowmill_operator.runner import SetupError, run
    from flowmill_operator.settings import OperatorSettings

    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    redact.install()
    namespaces = () if args.all_namespaces else tuple(args.namespace or ()) or None
    try:
        settings = OperatorSettings.from_env(
            render=_render_settings(args),
            namespaces=namespaces,
            kubeconfig=args.kubeconfig,
            peering=args.peering,
            priority=args.priority,
            resync_seconds=args.resync_seconds,
            pod_monitors=args.pod_monitors,
            liveness_endpoint=args.liveness,
        )
    except ValueError as err:
        print(f"flowmill operator: {err}", file=sys.stderr)
        return 2
    if args.standalone:
        settings = settings.model_copy(update={"peering": None})
    from kubernetes.config import ConfigException

    # Kopf handles SIGINT/SIGTERM itself: it finishes handlers in flight, then returns.
    try:
        asyncio.run(run(settings))
    except ConfigException as err:
        print(
            f"flowmill operator: no Kubernetes credentials ({err}): not running in a cluster, "
            "and no kubeconfig (--kubeconfig, $KUBECONFIG or ~/.kube/config)",
            file=sys.stderr,
        )
        return 1
    except SetupError as err:  # e.g. peering without its CRDs
        print(f"flowmill operator: {err}", file=sys.stderr)
        return 1
    return 0


def configure_operator(parser: argparse.ArgumentParser) -> None:
    parser.description = f"Run the Kopf operator that reconciles Pipelines; {ENV_HELP}."
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "-n",
        "--namespace",
        action="append",
        metavar="NS",
        help="watch this namespace (repeat for several; globs such as team-* work)",
    )
    where.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (default)"
    )
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, then kubectl's)"
    )
    _render_flags(parser)
    parser.add_argument(
        "--pod-monitors",
        choices=["auto", "always", "never"],
        help="a PodMonitor per Pipeline: auto = when the cluster serves the CRD",
    )
    parser.add_argument(
        "--resync-seconds", type=float, help="period of drift correction and status refresh"
    )
    parser.add_argument(
        "--liveness", metavar="URL", help="serve liveness, e.g. http://0.0.0.0:8080/healthz"
    )
    parser.add_argument("--peering", metavar="NAME", help="Kopf peering: one active replica")
    parser.add_argument("--priority", type=int, help="peering priority (default: random)")
    parser.add_argument("--standalone", action="store_true", help="ignore peering")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(handler=_operator)
