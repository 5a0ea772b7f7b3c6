"""Write the cluster variants of the examples: each example's Pipeline with its data
files as a ConfigMap mounted where its sources read them, in one file to `kubectl apply`.

    .venv/bin/python k8s/examples/cluster/generate.py     # from the repo root

The examples themselves stay what `flowmill run` reads; this adds only what a cluster
needs, so the two never drift apart (tests/operator/test_cluster_examples.py checks the
committed files are what this writes):

- a ConfigMap `<pipeline>-data` holding the example's data folder, mounted read-only at
  the folder's path under the image's working directory, so the relative paths in the
  spec resolve unchanged;
- for a Faust step, the modules (`*.py`) of its code folder (`faust.code.path`) as the
  ConfigMap its `faust.code.configMap` names, which the operator mounts for the worker;
- for Citi Bike, the local GBFS feed as a Deployment and Service (`flowmill gbfs-feed`)
  in the same namespace, and the httpPoll URLs pointing at it;
- nothing for Kafka and Redis: spec.kafka and spec.redis stay empty, so the operator's
  platform defaults (the chart's kafka.* and redis.* values) fill them in;
- citibike-s3: Citi Bike again, its Parquet lake in an S3 bucket instead of a pod's
  emptyDir, with credentials from a Secret the operator mounts (docs/lake.md).
"""

from __future__ import annotations

import copy
import posixpath
import sys
from pathlib import Path
from typing import Any

import yaml

from flowmill.run.gbfs_server import DEFAULT_PORT, HEALTH_PATH
from flowmill.spec import WORKING_DIR

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent
VARIANTS = ("streampulse", "trips", "streamlytics", "citibike", "trip-fraud", "citibike-s3")
S3_LAKE_VARIANTS = {"citibike-s3": "citibike"}
"""Variants whose Parquet lake is an S3 bucket: variant -> the example it is made from."""
LAKE_REGION = "us-east-1"
IMAGE = "flowmill:latest"
"""Image of the GBFS feed Deployment: replace it with the flowmill image your operator
runs (`kubectl set image` or sed), as the chart's image.* values name it."""
GBFS_SERVICE = "citibike-gbfs"
LOCAL_GBFS_ANNOTATION = "flowmill.dev/local-gbfs"
# The restricted Pod Security Standard, as the operator's own pods have it.
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
MAX_CONFIG_MAP_BYTES = 1_000_000  # the apiserver's limit is 1 MiB per object


def data_config_map(name: str, folder: Path, suffix: str = "") -> dict[str, Any]:
    """The files of `folder` (those ending in `suffix`) as a ConfigMap."""
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.endswith(suffix)
    )
    data = {p.name: p.read_text() for p in files}
    size = sum(len(v.encode()) for v in data.values())
    if size > MAX_CONFIG_MAP_BYTES:
        raise SystemExit(f"{folder}: {size} bytes do not fit a ConfigMap; use a volume")
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "flowmill-examples"}},
        "data": data,
    }


def mount_data(source: dict[str, Any], config_map: str, folder: str) -> None:
    """Mount the data ConfigMap at `folder` (relative, as the spec's paths are)."""
    source["template"] = {
        "volumes": [{"name": "data", "configMap": {"name": config_map}}],
        "volumeMounts": [
            {"name": "data", "mountPath": posixpath.join(WORKING_DIR, folder), "readOnly": True}
        ],
    }


def gbfs_feed(folder: Path) -> list[dict[str, Any]]:
    """The local GBFS feed as a Deployment and Service; its clock starts at the first
    poll, as with `flowmill run`, so the probes ask /healthz, never a feed document."""
    labels = {
        "app.kubernetes.io/name": GBFS_SERVICE,
        "app.kubernetes.io/part-of": "flowmill-examples",
    }
    feed = data_config_map(f"{GBFS_SERVICE}-feed", folder)
    probe = {"httpGet": {"path": HEALTH_PATH, "port": "http"}, "periodSeconds": 5}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": GBFS_SERVICE, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": GBFS_SERVICE}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": POD_SECURITY,
                    "containers": [
                        {
                            "name": "feed",
                            "image": IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["flowmill"],
                            "args": ["gbfs-feed", "/feed", "--port", str(DEFAULT_PORT)],
                            "ports": [{"name": "http", "containerPort": DEFAULT_PORT}],
                            "readinessProbe": probe,
                            "livenessProbe": probe,
                            "resources": {
                                "requests": {"cpu": "20m", "memory": "64Mi"},
                                "limits": {"memory": "128Mi"},
                            },
                            "securityContext": CONTAINER_SECURITY,
                            "volumeMounts": [
                                {"name": "feed", "mountPath": "/feed", "readOnly": True}
                            ],
                        }
                    ],
                    "volumes": [{"name": "feed", "configMap": {"name": feed["metadata"]["name"]}}],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": GBFS_SERVICE, "labels": labels},
        "spec": {
            "selector": {"app.kubernetes.io/name": GBFS_SERVICE},
            "ports": [{"name": "http", "port": DEFAULT_PORT, "targetPort": "http"}],
        },
    }
    return [feed, deployment, service]


def lake_secret(pipeline: str) -> str:
    """The Secret holding an S3 lake's AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."""
    return f"{pipeline}-lake-s3"


def lake_on_s3(pipeline: dict[str, Any]) -> None:
    """Every local Parquet lake of the Pipeline moved to the bucket `{pipeline}-lake`, under
    the name of the topic it lands as the key prefix. No endpoint: AWS S3 (docs/lake.md says how to
    point it at another S3-compatible store). The Secret is not in the file: credentials
    are never committed."""
    name = pipeline["metadata"]["name"]
    for step in pipeline["spec"].get("steps", []):
        parquet = (step.get("sink") or {}).get("parquet")
        if parquet is None or "path" not in parquet:
            continue
        del parquet["path"]
        s3 = {
            "bucket": f"{name}-lake",
            "prefix": step["from"],
            "region": LAKE_REGION,
            "credentialsSecret": lake_secret(name),
        }
        step["sink"]["parquet"] = {"s3": s3, **parquet}


def variant(name: str) -> list[dict[str, Any]]:
    base = S3_LAKE_VARIANTS.get(name, name)
    pipeline = copy.deepcopy(yaml.safe_load((EXAMPLES / f"{base}.yaml").read_text()))
    if name in S3_LAKE_VARIANTS:
        lake_on_s3(pipeline)
    spec = pipeline["spec"]
    name = base  # the data folder and the example's docs are the base example's
    extra: list[dict[str, Any]] = []
    folder = f"data/{name}"
    if any("fileReplay" in s for s in spec["sources"]):
        config_map = f"{pipeline['metadata']['name']}-data"
        extra.append(data_config_map(config_map, EXAMPLES / folder))
        for source in spec["sources"]:
            replay = source.get("fileReplay")
            if replay is None:
                continue
            if posixpath.dirname(replay["path"]) != folder:
                raise SystemExit(f"{name}: {replay['path']} is not in {folder}/")
            mount_data(source, config_map, folder)
    for step in spec.get("steps", []):
        code = (step.get("faust") or {}).get("code") or {}
        if "configMap" in code and "path" in code:
            # The modules only: the folder's pyproject.toml and Dockerfile build the image
            # that ships the same code instead (docs/faust.md).
            extra.append(data_config_map(code["configMap"], EXAMPLES / code["path"], ".py"))
    annotations = pipeline["metadata"].get("annotations") or {}
    if annotations.pop(LOCAL_GBFS_ANNOTATION, None) is not None:
        extra += gbfs_feed(EXAMPLES / folder)
        for source in spec["sources"]:
            poll = source.get("httpPoll")
            if poll is not None:
                path = poll["url"].split("/", 3)[3]
                poll["url"] = f"http://{GBFS_SERVICE}:{DEFAULT_PORT}/{path}"
        if not annotations:
            pipeline["metadata"].pop("annotations")
    return [*extra, pipeline]


def header(name: str) -> str:
    base = S3_LAKE_VARIANTS.get(name, name)
    text = (
        f"# {name} on a cluster: generated by k8s/examples/cluster/generate.py from\n"
        f"# k8s/examples/{base}.yaml and its data folder; edit those and regenerate.\n"
        "#\n"
    )
    if name in S3_LAKE_VARIANTS:
        secret = lake_secret(
            yaml.safe_load((EXAMPLES / f"{base}.yaml").read_text())["metadata"]["name"]
        )
        text += (
            f"# The same Pipeline as {base}.yaml (apply one of the two), its Parquet lake in an\n"
            "# S3 bucket. The bucket's credentials come from a Secret you create first; they\n"
            "# reach the lake worker as environment, never the Pipeline or its ConfigMap:\n"
            "#\n"
            f"#   kubectl create secret generic {secret} -n <namespace> \\\n"
            "#     --from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=...\n"
            "#\n"
            "# For an S3-compatible store (SeaweedFS, Ceph) add its URL as s3.endpoint. See\n"
            "# docs/lake.md.\n"
            "#\n"
        )
    return text + (
        f"#   kubectl apply -n <namespace> -f k8s/examples/cluster/{name}.yaml\n"
        "#\n"
        "# spec.kafka and spec.redis are empty: the operator's platform defaults (the\n"
        "# chart's kafka.* and redis.* values) say where Kafka and Redis are. See\n"
        f"# docs/examples/{base}.md.\n"
    )


class _Dumper(yaml.SafeDumper):
    # Every document prints in full (no anchors), data files as literal blocks.
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def render(name: str) -> str:
    documents = yaml.dump_all(
        variant(name),
        Dumper=_Dumper,
        sort_keys=False,
        explicit_start=True,
        allow_unicode=True,
        width=100,
    )
    return header(name) + documents


def main() -> int:
    for name in VARIANTS:
        (HERE / f"{name}.yaml").write_text(render(name))
        print(f"wrote k8s/examples/cluster/{name}.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
