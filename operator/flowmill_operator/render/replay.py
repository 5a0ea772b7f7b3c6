"""The Job that resets a replayed step (spec.replay, docs/replay.md).

The operator reads no Secrets, so it cannot reach a Kafka or Redis with credentials
itself: the reset runs as `flowmill replay-reset` in a pod built from the step's own pod
(image, env, secret references, TLS volumes, template), which reaches them exactly as
the step's workers do. It runs while the step's Deployment is at zero; the command
waits for the last worker to leave the consumer group (Kafka refuses to move its offsets
before), so a worker still stopping only delays it.
"""

from __future__ import annotations

import copy

from flowmill.replay import ReplayRefused, check_replayable
from flowmill.spec import StepSpec
from flowmill_operator import naming
from flowmill_operator.render.context import Manifest, RenderContext, RenderError

REPLAY_COMPONENT = "replay"
JOB_BACKOFF_LIMIT = 2
"""Retries of a failed reset pod: the reset is idempotent, so a retry after a lost
connection is safe; more would hide a real problem for minutes."""


def check_replay(ctx: RenderContext) -> None:
    """A request for a step that cannot be replayed is refused with the field."""
    request = ctx.pipeline.spec.replay
    if request is None:
        return
    from flowmill.manifest import FieldError

    try:
        check_replayable(ctx.pipeline.spec.step(request.step))
    except ReplayRefused as err:
        raise RenderError([FieldError("spec.replay.step", str(err))]) from err


def replay_args(ctx: RenderContext) -> list[str]:
    request = ctx.pipeline.spec.replay
    assert request is not None
    args = ["replay-reset", "--pipeline", naming.PIPELINE_FILE, "--step", request.step]
    if request.from_ is not None:
        return [*args, "--from", request.from_.isoformat().replace("+00:00", "Z")]
    return [*args, "--from-offset", str(request.from_offset)]


def replay_job(ctx: RenderContext, step: StepSpec, deployment: Manifest) -> Manifest:
    """The reset Job for `step`, its pod the step Deployment's pod (`deployment`) running
    the reset once instead of the worker."""
    request = ctx.pipeline.spec.replay
    assert request is not None and request.step == step.name
    template = copy.deepcopy(deployment["spec"]["template"])
    meta = template["metadata"]
    # Not the step's labels: its Deployment, PDB and status count the pods they select.
    meta["labels"] = {
        **{k: v for k, v in meta["labels"].items() if k != naming.STEP_LABEL},
        **naming.labels(ctx.name, REPLAY_COMPONENT),
    }
    # Nothing to scrape; and no spec hash, since a Job's pod template cannot change.
    annotations = {
        k: v
        for k, v in meta.pop("annotations").items()
        if k != naming.SPEC_HASH_ANNOTATION and not k.startswith("prometheus.io/")
    }
    if annotations:  # a template's own
        meta["annotations"] = annotations
    pod = template["spec"]
    pod["restartPolicy"] = "Never"
    (container,) = pod["containers"]
    container["name"] = REPLAY_COMPONENT
    container["args"] = replay_args(ctx)
    for key in ("ports", "startupProbe", "livenessProbe", "readinessProbe"):
        container.pop(key, None)
    name = naming.replay_job(ctx.name, step.name, request.id)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": ctx.metadata(name, REPLAY_COMPONENT),
        "spec": {"backoffLimit": JOB_BACKOFF_LIMIT, "template": template},
    }
