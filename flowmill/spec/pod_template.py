"""How users tailor the pods of a source, a step or the API: files (volumes and their
mounts), settings (env, envFrom), resources and placement. One shape for all three parts,
as Numaflow's `containerTemplate` and `volumes`, plus a Pipeline-wide default
(`spec.template`) that each part's own `template` is merged over.

The merge rule, used by the operator and documented in docs/operator.md: maps
(nodeSelector, labels, annotations, resources.requests, resources.limits) merge key by
key, the part's value winning; env and volumes merge by name and volumeMounts by
mountPath, the part's entry replacing the default's; envFrom and tolerations are the
default's followed by the part's; serviceAccountName and affinity are the part's when
set, else the default's.

Kubernetes types too large for a schema of their own (a volume's source, affinity) are
free-form here and checked by the apiserver when the Deployment is applied; the fields a
typo is likely in (env, envFrom, volumeMounts, resources, tolerations) are typed, so a
mistake is reported with its field path before anything is rendered.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from flowmill.spec.common import SpecModel, cel_rule
from flowmill.spec.launch import RESERVED_ENV

# Kubernetes' own patterns: an env name (C identifier plus . and -), a DNS-1123 label
# (volume names), a DNS-1123 subdomain (object names), a qualified label/annotation key.
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
VOLUME_SOURCES = ("configMap", "secret", "persistentVolumeClaim", "emptyDir")

_FREE_FORM: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
_RESERVED_LIST = "[" + ", ".join(f"'{name}'" for name in RESERVED_ENV) + "]"


class Resources(SpecModel):
    """Container resources, as in a Pod spec."""

    requests: dict[str, str] = Field(default_factory=dict, max_length=8)
    """e.g. {cpu: 100m, memory: 256Mi}"""
    limits: dict[str, str] = Field(default_factory=dict, max_length=8)
    """e.g. {memory: 512Mi}"""


class KeyRef(SpecModel):
    """A key of a ConfigMap or Secret in the Pipeline's namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    """The ConfigMap or Secret."""
    key: str = Field(min_length=1, max_length=253)
    """The key inside it."""
    optional: bool | None = None
    """Start the container even if it is missing."""


class FieldRef(SpecModel):
    """A field of the pod itself (the downward API)."""

    field_path: str = Field(min_length=1, max_length=200)
    """e.g. metadata.name, status.podIP, spec.nodeName."""


class ResourceFieldRef(SpecModel):
    """A resource request or limit of the container (the downward API)."""

    resource: str = Field(min_length=1, max_length=100)
    """e.g. limits.memory, requests.cpu."""
    divisor: str | None = Field(default=None, max_length=20)
    """Unit of the value, e.g. 1Mi."""


class EnvVarSource(SpecModel):
    """Where an environment variable's value comes from."""

    model_config = SpecModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel_rule(
                    "[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef), "
                    "has(self.resourceFieldRef)].filter(x, x).size() == 1",
                    "set exactly one of secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef",
                )
            ]
        }
    }

    secret_key_ref: KeyRef | None = None
    """A Secret's key."""
    config_map_key_ref: KeyRef | None = None
    """A ConfigMap's key."""
    field_ref: FieldRef | None = None
    """A field of the pod."""
    resource_field_ref: ResourceFieldRef | None = None
    """A resource of the container."""

    @model_validator(mode="after")
    def _one(self) -> Self:
        chosen = [
            v
            for v in (
                self.secret_key_ref,
                self.config_map_key_ref,
                self.field_ref,
                self.resource_field_ref,
            )
            if v is not None
        ]
        if len(chosen) != 1:
            raise ValueError(
                "set exactly one of secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef"
            )
        return self


class EnvVar(SpecModel):
    """An environment variable of the container."""

    model_config = SpecModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel_rule("!(has(self.value) && has(self.valueFrom))", "set value or valueFrom"),
                cel_rule(
                    f"!(self.name in {_RESERVED_LIST})",
                    "flowmill sets this variable itself (from spec.kafka, spec.redis, "
                    "spec.api); it cannot be overridden",
                    ".name",
                ),
            ]
        }
    }

    name: str = Field(pattern=ENV_NAME_PATTERN, max_length=253)
    """Variable name; not one of the FLOWMILL_* variables flowmill sets itself."""
    value: str | None = Field(default=None, max_length=32768)
    """A literal value."""
    value_from: EnvVarSource | None = None
    """A value from a Secret, a ConfigMap or the pod."""

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_ENV:
            raise ValueError(
                f"{name} is set by flowmill itself (from spec.kafka, spec.redis, spec.api) "
                "and cannot be overridden"
            )
        return name

    @model_validator(mode="after")
    def _one_value(self) -> Self:
        if self.value is not None and self.value_from is not None:
            raise ValueError("set value or valueFrom, not both")
        return self


class ObjectRef(SpecModel):
    """A ConfigMap or Secret in the Pipeline's namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    """Its name."""
    optional: bool | None = None
    """Start the container even if it is missing."""


class EnvFromSource(SpecModel):
    """Every key of a ConfigMap or Secret as environment variables."""

    model_config = SpecModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel_rule(
                    "has(self.configMapRef) != has(self.secretRef)",
                    "set exactly one of configMapRef, secretRef",
                )
            ]
        }
    }

    prefix: str | None = Field(default=None, pattern=ENV_NAME_PATTERN, max_length=253)
    """Prepended to every key."""
    config_map_ref: ObjectRef | None = None
    """The ConfigMap."""
    secret_ref: ObjectRef | None = None
    """The Secret."""

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.config_map_ref is None) == (self.secret_ref is None):
            raise ValueError("set exactly one of configMapRef, secretRef")
        return self


class VolumeMount(SpecModel):
    """Where a volume appears in the container."""

    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63)
    """One of the template's volumes."""
    mount_path: str = Field(pattern=r"^/", max_length=1000)
    """Absolute path in the container."""
    sub_path: str | None = Field(default=None, max_length=1000)
    """A path inside the volume to mount instead of its root."""
    read_only: bool | None = None
    """Mount read-only (ConfigMaps and Secrets always are)."""


class Volume(SpecModel):
    """A volume of the pod: its name and one source, written as in a Pod spec, e.g.
    {name: data, configMap: {name: trips-data}}, {name: lake, persistentVolumeClaim:
    {claimName: lake}}, {name: scratch, emptyDir: {}}. The source is checked by the
    apiserver when the Deployment is applied."""

    model_config = SpecModel.model_config | {
        "extra": "allow",
        # CEL cannot see fields a schema does not declare, so "exactly one source" is
        # checked by the model (and by the apiserver on the Deployment).
        "json_schema_extra": {"x-kubernetes-preserve-unknown-fields": True},
    }

    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63)
    """Volume name, referenced by volumeMounts."""

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        sources = list(self.model_extra or {})
        if len(sources) != 1:
            raise ValueError(
                f"a volume has exactly one source, e.g. one of {', '.join(VOLUME_SOURCES)} "
                f"(got {', '.join(sources) or 'none'})"
            )
        return self

    @property
    def source(self) -> dict[str, Any]:
        """The source as written, e.g. {configMap: {name: trips-data}}."""
        return dict(self.model_extra or {})


class Toleration(SpecModel):
    """Lets the pod run on nodes with a matching taint."""

    key: str | None = Field(default=None, max_length=317)
    """Taint key; unset with operator Exists matches every taint."""
    operator: Literal["Exists", "Equal"] | None = None
    """Equal (the default) or Exists."""
    value: str | None = Field(default=None, max_length=63)
    """Taint value, for Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; unset matches all."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """NoExecute only: how long the pod stays after the taint appears."""


class PodTemplate(SpecModel):
    """What to add to the pods of a source, a step or the API."""

    volumes: list[Volume] = Field(default_factory=list, max_length=50)
    """Volumes of the pod (ConfigMap, Secret, PersistentVolumeClaim, emptyDir, ...)."""
    # Keyed by mountPath, as in a Pod spec: one volume may be mounted twice (subPath).
    volume_mounts: list[VolumeMount] = Field(
        default_factory=list, max_length=50, json_schema_extra={"x-kubernetes-list-type": "atomic"}
    )
    """Where the volumes appear in the container."""
    env: list[EnvVar] = Field(default_factory=list, max_length=100)
    """Environment variables."""
    env_from: list[EnvFromSource] = Field(default_factory=list, max_length=20)
    """ConfigMaps and Secrets whose keys all become environment variables."""
    resources: Resources | None = None
    """Container resources; unset keeps the operator's defaults."""
    node_selector: dict[str, str] = Field(default_factory=dict, max_length=20)
    """Labels a node must have."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=20)
    """Taints the pod tolerates."""
    affinity: dict[str, Any] | None = Field(default=None, json_schema_extra=_FREE_FORM)
    """Node and pod (anti-)affinity, as in a Pod spec."""
    service_account_name: str | None = Field(
        default=None, pattern=DNS_SUBDOMAIN_PATTERN, max_length=253
    )
    """ServiceAccount the pod runs as (e.g. for cloud workload identity); its token is
    still not mounted, since workers and the API never call the Kubernetes API."""
    annotations: dict[str, str] = Field(default_factory=dict, max_length=50)
    """Annotations of the pods (not the Deployment)."""
    labels: dict[str, str] = Field(default_factory=dict, max_length=30)
    """Labels of the pods, in addition to flowmill's own."""

    @model_validator(mode="after")
    def _unique(self) -> Self:
        for kind, keys in (
            ("volumes", [v.name for v in self.volumes]),
            ("volumeMounts", [m.mount_path for m in self.volume_mounts]),
            ("env", [e.name for e in self.env]),
        ):
            duplicates = sorted({k for k in keys if keys.count(k) > 1})
            if duplicates:
                raise ValueError(f"{kind} lists {', '.join(duplicates)} more than once")
        return self

    def merged_over(self, default: PodTemplate | None) -> PodTemplate:
        """This template over the Pipeline-wide default, by the module's merge rule."""
        if default is None:
            return self

        def by(items: list[Any], key: str, over: list[Any]) -> list[Any]:
            mine = {getattr(i, key) for i in over}
            return [i for i in items if getattr(i, key) not in mine] + over

        resources = self.resources
        if default.resources is not None:
            own = self.resources or Resources()
            resources = Resources(
                requests={**default.resources.requests, **own.requests},
                limits={**default.resources.limits, **own.limits},
            )
        return PodTemplate(
            volumes=by(default.volumes, "name", self.volumes),
            volume_mounts=by(default.volume_mounts, "mount_path", self.volume_mounts),
            env=by(default.env, "name", self.env),
            env_from=[*default.env_from, *self.env_from],
            resources=resources,
            node_selector={**default.node_selector, **self.node_selector},
            tolerations=[*default.tolerations, *self.tolerations],
            affinity=self.affinity if self.affinity is not None else default.affinity,
            service_account_name=self.service_account_name or default.service_account_name,
            annotations={**default.annotations, **self.annotations},
            labels={**default.labels, **self.labels},
        )
