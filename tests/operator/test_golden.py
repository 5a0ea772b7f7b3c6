"""`flowmill render` of every example against a golden file, and the rendered manifests
through a server-side dry-run on the real apiserver.

Regenerate the golden files after an intended change with:

    FLOWMILL_UPDATE_GOLDEN=1 .venv/bin/pytest tests/operator/test_golden.py
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from flowmill.cli import main
from flowmill.manifest import parse_pipeline
from flowmill_operator.render import render, to_yaml
from tests.harness.kube import KubeControlPlane
from tests.operator.fixtures import TEST_RENDER
from tests.operator.helpers import (
    GOLDEN,
    Cluster,
    example_files,
    example_ids,
    for_namespace,
    pipeline_documents,
)

# Read before the fixture below clears FLOWMILL_* from the environment.
UPDATE = os.environ.get("FLOWMILL_UPDATE_GOLDEN") == "1"


@pytest.fixture(autouse=True)
def _no_operator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI reads FLOWMILL_* settings; golden output must not depend on the caller's.
    for key in list(os.environ):
        if key.startswith("FLOWMILL_"):
            monkeypatch.delenv(key)


# The platform defaults of tests/operator/fixtures.py, as flags.
PLATFORM_FLAGS = [
    "--image",
    TEST_RENDER.image,
    "--default-kafka-cluster",
    str(TEST_RENDER.default_kafka_cluster),
    "--default-redis-url",
    str(TEST_RENDER.default_redis_url),
    "--prometheus-url",
    str(TEST_RENDER.prometheus_url),
]


def render_cli(path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    code = main(["render", str(path), *PLATFORM_FLAGS, *flags])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.mark.parametrize("path", example_files(), ids=example_ids())
def test_render_matches_golden_file(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = render_cli(path, capsys)
    golden = GOLDEN / f"{path.stem}.yaml"
    if UPDATE:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(out)
    assert golden.exists(), (
        f"no golden file for {path.name}: run FLOWMILL_UPDATE_GOLDEN=1 .venv/bin/pytest "
        "tests/operator/test_golden.py and review the new file"
    )
    assert out == golden.read_text(), (
        f"`flowmill render {path.name}` differs from {golden.relative_to(GOLDEN.parents[2])}; "
        "if the change is intended, rerun with FLOWMILL_UPDATE_GOLDEN=1 and review the diff"
    )


def test_golden_files_have_examples() -> None:
    stale = {p.stem for p in GOLDEN.glob("*.yaml")} - set(example_ids())
    assert not stale, f"golden files without an example: {sorted(stale)}"


def test_render_cli_is_exactly_the_renderer(capsys: pytest.CaptureFixture[str]) -> None:
    path = example_files()[0]
    out = render_cli(path, capsys, "--pdb", "--pod-monitor", "-n", "elsewhere")
    (document,) = pipeline_documents(path)
    rendered = render(
        parse_pipeline(document),
        TEST_RENDER.model_copy(update={"pod_disruption_budgets": True, "pod_monitor": True}),
        namespace="elsewhere",
    )
    assert out == to_yaml(rendered.manifests)
    assert list(yaml.safe_load_all(out)) == rendered.manifests


def test_render_cli_names_the_invalid_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = yaml.safe_load(example_files()[0].read_text())
    document["spec"]["steps"][0]["aggregate"]["trips"] = {"median": "fare"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(document))
    assert main(["render", str(bad)]) == 1
    assert "spec.steps[0].aggregate.trips" in capsys.readouterr().err
    document = yaml.safe_load(example_files()[0].read_text())
    document["spec"]["kafka"] = {}
    bad.write_text(yaml.safe_dump(document))
    assert main(["render", str(bad)]) == 1  # and no platform default Kafka
    assert "spec.kafka: set cluster" in capsys.readouterr().err


VARIANTS = {
    "defaults": TEST_RENDER,
    # Strimzi 0.4x, KEDA for every step, and the optional children.
    "v1beta2-keda-extras": TEST_RENDER.model_copy(
        update={
            "strimzi_api_version": "kafka.strimzi.io/v1beta2",
            "autoscaler": "keda",
            "pod_disruption_budgets": True,
            "pod_monitor": True,
        }
    ),
}


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
@pytest.mark.parametrize("path", example_files(), ids=example_ids())
def test_rendered_manifests_pass_server_side_dry_run(
    path: Path,
    variant: str,
    operator_crds: KubeControlPlane,
    cluster: Cluster,
    kube_namespace: str,
    tmp_path: Path,
) -> None:
    kafka_namespace = f"{kube_namespace}-kafka"
    cluster.create_namespace(kafka_namespace)
    manifests = []
    for document in pipeline_documents(path):
        pipeline = parse_pipeline(for_namespace(document, kube_namespace, kafka_namespace))
        manifests += render(pipeline, VARIANTS[variant]).manifests
    file = tmp_path / "rendered.yaml"
    file.write_text(to_yaml(manifests))
    try:
        out = operator_crds.kubectl(
            "apply", "--server-side", "--field-manager=flowmill-operator", "--dry-run=server",
            "-f", str(file),
        )  # fmt: skip
    except subprocess.CalledProcessError as err:
        pytest.fail(f"the apiserver refused rendered manifests:\n{err.stderr}")
    assert out.count("serverside-applied (server dry run)") == len(manifests), out
