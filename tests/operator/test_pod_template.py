"""Pod templates: what a user adds to the pods of sources, steps and the API, merged over
the Pipeline-wide default, and what they may not touch."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from kubernetes.client.rest import ApiException

from flowmill.manifest import PipelineInvalid, parse_pipeline
from flowmill_operator.render import RenderError, render
from tests.harness.kube import KubeControlPlane
from tests.operator.fixtures import TEST_RENDER
from tests.operator.helpers import GROUP, PLURAL, ROOT, VERSION, Cluster, for_namespace

TAILORED = ROOT / "tests" / "operator" / "pipelines" / "pod_templates.yaml"


def document() -> dict[str, Any]:
    return dict(yaml.safe_load(TAILORED.read_text()))


def pods(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Pod template of each Deployment, by Deployment name."""
    out = render(parse_pipeline(doc), TEST_RENDER).manifests
    return {m["metadata"]["name"]: m["spec"]["template"] for m in out if m["kind"] == "Deployment"}


def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["spec"]["containers"]
    return dict(only)


def env(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container(pod)["env"]}


def test_every_field_lands_in_the_pod_of_its_part() -> None:
    step = pods(document())["tailored-step-per-zone"]
    spec, c = step["spec"], container(step)
    assert {"name": "cache", "emptyDir": {"sizeLimit": "64Mi"}} in spec["volumes"]
    assert {
        "name": "models",
        "persistentVolumeClaim": {"claimName": "zone-models", "readOnly": True},
    } in spec["volumes"]
    assert {"name": "tls", "secret": {"secretName": "zone-tls"}} in spec["volumes"]
    assert {
        "name": "tls",
        "mountPath": "/etc/tls",
        "subPath": "tls.crt",
        "readOnly": True,
    } in c["volumeMounts"]
    assert env(step)["API_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "zone-token", "key": "token"}
    }
    assert env(step)["MEMORY_LIMIT"]["valueFrom"]["resourceFieldRef"]["divisor"] == "1Mi"
    assert c["envFrom"] == [
        {"configMapRef": {"name": "shared-settings"}},
        {"prefix": "S3_", "secretRef": {"name": "s3-credentials", "optional": True}},
    ]
    assert spec["serviceAccountName"] == "zone-reader"
    assert spec["automountServiceAccountToken"] is False, "workers never call the API"
    assert spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    # flowmill's own parts stay: the spec, /tmp for a read-only root, the hardening.
    assert {"spec", "tmp"} <= {v["name"] for v in spec["volumes"]}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert env(step)["FLOWMILL_BOOTSTRAP_SERVERS"]["value"] == "kafka.data.svc:9092"


def test_the_part_is_merged_over_the_pipeline_default() -> None:
    rendered = pods(document())
    step, source, api = (
        rendered["tailored-step-per-zone"],
        rendered["tailored-source-replay"],
        rendered["tailored-api"],
    )
    # Maps merge by key, the part winning.
    assert step["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux", "pool": "compute"}
    assert step["metadata"]["annotations"]["team"] == "zones"
    assert source["metadata"]["annotations"]["team"] == "data-platform"
    assert step["metadata"]["labels"]["cost-center"] == "analytics"
    assert step["metadata"]["labels"]["tier"] == "compute"
    # env merges by name: the source's LOG_FORMAT replaces the default's, TZ stays.
    assert env(source)["LOG_FORMAT"]["value"] == "text"
    assert env(source)["TZ"]["value"] == "UTC"
    assert env(step)["LOG_FORMAT"]["value"] == "json"
    # Lists are the default's, then the part's.
    assert [t.get("key") for t in step["spec"]["tolerations"]] == ["dedicated", None]
    # resources merge per resource name.
    assert container(step)["resources"] == {
        "requests": {"cpu": "200m", "memory": "256Mi"},
        "limits": {"memory": "384Mi"},
    }
    assert container(api)["resources"] == {
        "requests": {"cpu": "50m"},
        "limits": {"memory": "384Mi", "cpu": "1"},
    }
    assert api["spec"]["serviceAccountName"] == "api-reader"
    assert "serviceAccountName" not in source["spec"]


def test_no_template_renders_what_it_rendered_before() -> None:
    doc = document()
    doc["spec"].pop("template")
    for part in [*doc["spec"]["sources"], *doc["spec"]["steps"], doc["spec"]["api"]]:
        part.pop("template", None)
    step = pods(doc)["tailored-step-per-zone"]
    assert [v["name"] for v in step["spec"]["volumes"]] == ["spec", "tmp"]
    assert "nodeSelector" not in step["spec"] and "serviceAccountName" not in step["spec"]
    assert container(step)["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "512Mi"},
    }


@pytest.mark.parametrize(
    ("edit", "path"),
    [
        (
            lambda d: d["spec"]["steps"][0]["template"]["env"].append(
                {"name": "FLOWMILL_REDIS_URL", "value": "redis://elsewhere:6379"}
            ),
            "spec.steps[0].template.env[3].name",
        ),
        (
            lambda d: d["spec"]["template"]["env"].append(
                {"name": "FLOWMILL_BOOTSTRAP_SERVERS", "value": "x:9092"}
            ),
            "spec.template.env[2].name",
        ),
        (
            lambda d: d["spec"]["steps"][0]["template"]["volumeMounts"].append(
                {"name": "cache", "mountPath": "relative/path"}
            ),
            "spec.steps[0].template.volumeMounts[3].mountPath",
        ),
        (
            lambda d: d["spec"]["steps"][0]["template"]["volumes"].append(
                {"name": "two", "emptyDir": {}, "configMap": {"name": "x"}}
            ),
            "spec.steps[0].template.volumes[3]",
        ),
        (
            lambda d: d["spec"]["steps"][0]["template"]["env"].append(
                {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "kye": "k"}}}
            ),
            "spec.steps[0].template.env[3].valueFrom.secretKeyRef",
        ),
        (
            lambda d: d["spec"]["steps"][0]["template"]["tolerations"].append(
                {"operator": "Maybe"}
            ),
            "spec.steps[0].template.tolerations[1].operator",
        ),
        (
            lambda d: d["spec"]["steps"][0].update(resources={"limits": {"cpu": "1"}}),
            "spec.steps[0]",
        ),
    ],
    ids=[
        "reserved-env",
        "reserved-env-default",
        "relative-mount",
        "two-sources",
        "typo",
        "toleration",
        "resources-twice",
    ],
)
def test_invalid_templates_name_the_field(edit: Any, path: str) -> None:
    doc = copy.deepcopy(document())
    edit(doc)
    with pytest.raises(PipelineInvalid) as err:
        parse_pipeline(doc)
    assert any(e.path.startswith(path) for e in err.value.errors), err.value.errors


@pytest.mark.parametrize(
    ("edit", "path"),
    [
        (
            lambda d: d["spec"]["sources"][0]["template"]["volumes"].append(
                {"name": "tmp", "emptyDir": {}}
            ),
            "spec.sources[0].template.volumes[1].name",
        ),
        (
            lambda d: d["spec"]["template"].update(
                volumes=[{"name": "etc", "emptyDir": {}}],
                volumeMounts=[{"name": "etc", "mountPath": "/etc/flowmill"}],
            ),
            "spec.template.volumeMounts[0].mountPath",
        ),
        (
            lambda d: d["spec"]["steps"][0]["template"]["volumeMounts"].append(
                {"name": "nowhere", "mountPath": "/nowhere"}
            ),
            "spec.steps[0].template.volumeMounts[3].name",
        ),
        (
            lambda d: d["spec"]["steps"][0]["template"]["labels"].update(
                {"flowmill.dev/step": "other"}
            ),
            "spec.steps[0].template.labels[flowmill.dev/step]",
        ),
        (
            lambda d: d["spec"]["api"]["template"].update(
                annotations={"flowmill.dev/spec-hash": "0"}
            ),
            "spec.api.template.annotations[flowmill.dev/spec-hash]",
        ),
    ],
    ids=["flowmill-volume", "flowmill-mount", "unknown-volume", "selector-label", "hash"],
)
def test_a_template_cannot_take_what_flowmill_uses(edit: Any, path: str) -> None:
    doc = copy.deepcopy(document())
    edit(doc)
    with pytest.raises(RenderError) as err:
        render(parse_pipeline(doc), TEST_RENDER)
    assert [e.path for e in err.value.errors] == [path], err.value.errors


def test_the_crd_accepts_templates_and_refuses_flowmills_own_env(
    operator_crds: KubeControlPlane, cluster: Cluster, kube_namespace: str
) -> None:
    body = for_namespace(document(), kube_namespace)
    cluster.custom.create_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, PLURAL, body, dry_run="All"
    )
    body["spec"]["steps"][0]["template"]["env"].append(
        {"name": "FLOWMILL_REDIS_URL", "value": "redis://elsewhere:6379"}
    )
    with pytest.raises(ApiException) as err:
        cluster.custom.create_namespaced_custom_object(
            GROUP, VERSION, kube_namespace, PLURAL, body, dry_run="All"
        )
    assert err.value.status == 422
    assert "spec.steps[0].template.env[3].name" in str(err.value.body)
    assert "flowmill sets this variable itself" in str(err.value.body)
