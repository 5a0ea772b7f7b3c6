"""A part's pod template (its own merged over spec.template, see flowmill.spec.pod_template)
applied to the Deployment flowmill rendered for it.

The template adds to the pod; it never replaces what flowmill put there. What flowmill
rendered is the reference: a volume name, mount path, label or annotation it already
uses is refused with the field that asked for it, so no list of reserved names has to
be kept in step with the renderer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flowmill.manifest import FieldError
from flowmill.spec import PodTemplate
from flowmill_operator.render.context import Manifest, RenderError


@dataclass(frozen=True)
class TemplateSource:
    """Where a part's template came from, to name the field behind an entry."""

    own: PodTemplate | None
    own_path: str
    """e.g. spec.steps[2].template"""
    default: PodTemplate | None

    def path(self, field: str, key: str, value: str, leaf: str | None = None) -> str:
        """The field that contributed the entry of `field` whose `key` is `value` (the
        part's own template wins the merge, so it is looked at first)."""
        for template, prefix in ((self.own, self.own_path), (self.default, "spec.template")):
            if template is None:
                continue
            entries = getattr(template, field)
            if isinstance(entries, dict):
                if value in entries:
                    return f"{prefix}.{_camel(field)}[{value}]"
                continue
            for i, entry in enumerate(entries):
                if getattr(entry, key) == value:
                    return f"{prefix}.{_camel(field)}[{i}].{_camel(leaf or key)}"
        return f"{self.own_path}.{_camel(field)}"


def apply_template(deployment: Manifest, template: PodTemplate, source: TemplateSource) -> None:
    """Add the template's volumes, mounts, env, resources, placement, labels and
    annotations to `deployment` (in place); RenderError if it collides with flowmill's."""
    errors: list[FieldError] = []
    pod_meta = deployment["spec"]["template"]["metadata"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    taken_volumes = {v["name"] for v in pod["volumes"]}
    for volume in template.volumes:
        if volume.name in taken_volumes:
            errors.append(_taken(source.path("volumes", "name", volume.name), volume.name))
    known_volumes = taken_volumes | {v.name for v in template.volumes}
    taken_paths = {m["mountPath"] for m in container["volumeMounts"]}
    for mount in template.volume_mounts:
        where = source.path("volume_mounts", "mount_path", mount.mount_path)
        if mount.mount_path in taken_paths:
            errors.append(_taken(where, mount.mount_path))
        if mount.name not in known_volumes:
            errors.append(
                FieldError(
                    source.path("volume_mounts", "mount_path", mount.mount_path, leaf="name"),
                    f"no volume named {mount.name!r} in the template's volumes",
                )
            )
    for key in template.labels:
        if key in pod_meta["labels"]:
            errors.append(_taken(source.path("labels", "", key), key))
    for key in template.annotations:
        if key in pod_meta["annotations"]:
            errors.append(_taken(source.path("annotations", "", key), key))
    if errors:
        raise RenderError(errors)

    pod["volumes"] += [{"name": v.name, **_plain(v.source)} for v in template.volumes]
    container["volumeMounts"] += [m.to_manifest() for m in template.volume_mounts]
    container["env"] += [e.to_manifest() for e in template.env]
    if template.env_from:
        container["envFrom"] = container.get("envFrom", []) + [
            e.to_manifest() for e in template.env_from
        ]
    if template.resources is not None:
        own = template.resources
        resources = container["resources"]
        container["resources"] = {
            "requests": own.requests or resources["requests"],
            "limits": own.limits or resources["limits"],
        }
    pod_meta["labels"] = {**pod_meta["labels"], **template.labels}
    pod_meta["annotations"] = {**pod_meta["annotations"], **template.annotations}
    if template.service_account_name:
        pod["serviceAccountName"] = template.service_account_name
    if template.node_selector:
        pod["nodeSelector"] = dict(template.node_selector)
    if template.tolerations:
        pod["tolerations"] = [t.to_manifest() for t in template.tolerations]
    if template.affinity is not None:
        pod["affinity"] = _plain(template.affinity)


def _taken(path: str, what: str) -> FieldError:
    return FieldError(path, f"{what} is already used by flowmill in this pod; choose another")


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.title() for p in rest)


def _plain(value: Any) -> Any:
    # Free-form fields arrive as the parsed YAML; a copy keeps renders independent.
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
