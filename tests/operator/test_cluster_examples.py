"""The examples' cluster variants (k8s/examples/cluster/): what generate.py writes, data
that fits ConfigMaps, and every object, the Pipeline and what the operator renders from
it, accepted by a server-side dry run on the real apiserver."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from flowmill.manifest import parse_pipeline
from flowmill_operator.render import render, to_yaml
from tests.harness.kube import KubeControlPlane
from tests.operator.fixtures import TEST_RENDER
from tests.operator.helpers import ROOT, Cluster, for_namespace

CLUSTER = ROOT / "k8s" / "examples" / "cluster"
# A platform without Strimzi: Kafka and Redis named once, topics through the admin API.
PLATFORM = TEST_RENDER.model_copy(
    update={
        "default_kafka_cluster": None,
        "default_bootstrap_servers": "kafka.flowmill.svc:9092",
        "topic_management": "admin",
    }
)


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cluster_examples", CLUSTER / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATE = generator()
VARIANTS: tuple[str, ...] = GENERATE.VARIANTS


def documents(name: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((CLUSTER / f"{name}.yaml").read_text()))


def test_every_variant_is_committed_as_generated() -> None:
    committed = {p.stem for p in CLUSTER.glob("*.yaml")}
    assert committed == set(VARIANTS)
    for name in VARIANTS:
        assert (CLUSTER / f"{name}.yaml").read_text() == GENERATE.render(name), (
            f"k8s/examples/cluster/{name}.yaml is stale: run "
            ".venv/bin/python k8s/examples/cluster/generate.py"
        )


@pytest.mark.parametrize("name", VARIANTS)
def test_data_is_mounted_where_the_sources_read_it(name: str) -> None:
    docs = documents(name)
    (body,) = [d for d in docs if d["kind"] == "Pipeline"]
    pipeline = parse_pipeline(body)
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    for cm in config_maps.values():
        assert sum(len(v.encode()) for v in cm["data"].values()) < 1_000_000
    deployments = {
        m["metadata"]["name"]: m
        for m in render(pipeline, PLATFORM).manifests
        if m["kind"] == "Deployment"
    }
    for source in pipeline.spec.sources:
        pod = deployments[f"{pipeline.name}-source-{source.name}"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        if source.file_replay is not None:
            folder, file = source.file_replay.path.rsplit("/", 1)
            mount = next(m for m in container["volumeMounts"] if m["name"] == "data")
            assert mount["mountPath"] == f"/home/flowmill/{folder}"
            volume = next(v for v in pod["volumes"] if v["name"] == "data")
            assert file in config_maps[volume["configMap"]["name"]]["data"]
        if source.http_poll is not None:
            service = next(d for d in docs if d["kind"] == "Service")
            port = service["spec"]["ports"][0]["port"]
            assert source.http_poll.url.startswith(f"http://{service['metadata']['name']}:{port}/")


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_and_its_rendered_children_pass_server_side_dry_run(
    name: str,
    operator_crds: KubeControlPlane,
    cluster: Cluster,
    kube_namespace: str,
    tmp_path: Path,
) -> None:
    docs = documents(name)
    objects = []
    for doc in docs:
        if doc["kind"] == "Pipeline":
            body = for_namespace(doc, kube_namespace)
            objects.append(body)
            objects += render(parse_pipeline(body), PLATFORM).manifests
        else:
            objects.append({**doc, "metadata": {**doc["metadata"], "namespace": kube_namespace}})
    file = tmp_path / "variant.yaml"
    file.write_text(to_yaml(objects))
    try:
        out = operator_crds.kubectl(
            "apply", "--server-side", "--field-manager=flowmill-operator", "--dry-run=server",
            "-f", str(file),
        )  # fmt: skip
    except subprocess.CalledProcessError as err:
        pytest.fail(f"the apiserver refused the {name} variant:\n{err.stderr}")
    assert out.count("serverside-applied (server dry run)") == len(objects), out


def test_s3_lake_credentials_reach_only_the_lake_worker_from_the_secret() -> None:
    """citibike-s3: the lake step gets the bucket's Secret as environment (envFrom), no
    other pod does, nothing holds a key literally, and the variant carries no Secret."""
    docs = documents("citibike-s3")
    assert not [d for d in docs if d["kind"] == "Secret"]
    (body,) = [d for d in docs if d["kind"] == "Pipeline"]
    pipeline = parse_pipeline(body)
    (lake,) = [s for s in pipeline.spec.steps if s.sink and s.sink.parquet]
    assert lake.sink is not None and lake.sink.parquet is not None
    target = lake.sink.parquet.s3
    assert target is not None and target.credentials_secret == "citibike-lake-s3"
    manifests = render(pipeline, PLATFORM).manifests
    pods = {
        m["metadata"]["name"]: m["spec"]["template"]["spec"]
        for m in manifests
        if m["kind"] == "Deployment"
    }
    secret_ref = {"secretRef": {"name": "citibike-lake-s3"}}
    for name, pod in pods.items():
        (container,) = pod["containers"]
        expected = [secret_ref] if name == f"{pipeline.name}-step-{lake.name}" else []
        assert container.get("envFrom", []) == expected, name
        assert not [e for e in container.get("env", []) if e["name"].startswith("AWS_")], name
        # A bucket needs no local lake volume (the path variant mounts an emptyDir).
        assert "lake" not in {v["name"] for v in pod.get("volumes", [])}, name
    (spec_map,) = [m for m in manifests if m["kind"] == "ConfigMap"]
    text = yaml.safe_dump(spec_map)
    assert "citibike-lake-s3" in text and "AWS_" not in text
