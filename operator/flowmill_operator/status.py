"""Pipeline status from the children as the apiserver returned them.

Pure functions of their inputs (plus the clock for transition times), so every rule
about what Ready means is testable without a cluster.

- TopicsReady: Strimzi's topic operator marked every KafkaTopic Ready for its current
  generation (or the Pipeline names no Strimzi cluster, so topics are not ours).
- WorkersReady: every source and step Deployment has rolled out its current template and
  has all its desired replicas ready (zero desired counts as ready: KEDA scaled it down).
- ApiReady: the same for the API Deployment (or the API is disabled).
- TablesExact: every serving table answers exactly, as the workers' status hashes in
  Redis say (table_state.py); False while a step rebuilds a table from Kafka (Ready waits
  for it) or once a table is incomplete (Degraded); Unknown when Redis cannot be read.
- Ready: all three, and the spec was valid and every child applied.
- Degraded: something needs a human: invalid spec, a child the apiserver refused, a topic
  Strimzi rejected, a rollout past its progress deadline.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flowmill import serving
from flowmill.spec import API_PORT, Pipeline
from flowmill_operator import naming
from flowmill_operator.render import Rendered
from flowmill_operator.table_state import TableStates
from flowmill_operator.topic_admin import DeadLetterCount, TopicSync

Obj = dict[str, Any]
ChildKey = tuple[str, str, str]
"""(kind, namespace, name)"""


@dataclass
class Observation:
    """What one reconcile saw: the live children and what went wrong."""

    children: dict[ChildKey, Obj] = field(default_factory=dict)
    apply_errors: dict[ChildKey, str] = field(default_factory=dict)
    autoscalers: dict[str, Obj] = field(default_factory=dict)
    """Per step, the HPA that scales it (ours, or the one KEDA made)."""
    keda_hpas: dict[str, Obj] = field(default_factory=dict)
    """HPAs KEDA made for our ScaledObjects, by name."""
    topic_sync: TopicSync | None = None
    """admin mode: what the sync through the Kafka admin API found and did."""
    topic_error: str | None = None
    """admin mode: why the sync could not run (Kafka unreachable)."""
    pods: list[Obj] | None = None
    """The Pipeline's pods (for their restarts); None when they could not be listed."""
    tables: TableStates | None = None
    """What the serving tables' status hashes say; None when the Pipeline has no tables."""
    dead_letters: dict[str, DeadLetterCount] | None = None
    """admin mode: each dead-letter topic's records and newest reason; None: not read."""


@dataclass(frozen=True)
class Verdict:
    ready: bool
    reason: str
    message: str
    degraded: bool = False
    """Whether the reason needs a human (as opposed to waiting)."""


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(conditions: Iterable[Obj], kind: str) -> Obj | None:
    return next((c for c in conditions or [] if c.get("type") == kind), None)


def admin_topic_verdict(seen: Observation) -> Verdict:
    """admin mode: the operator's own sync through the Kafka admin API."""
    if seen.topic_error is not None or seen.topic_sync is None:
        message = seen.topic_error or "the topics were not synced"
        return Verdict(False, "KafkaUnreachable", message, degraded=True)
    refused = seen.topic_sync.refused
    shrinks = [t.message for t in refused if t.state == "ShrinkRefused"]
    if shrinks:
        return Verdict(False, "PartitionShrinkRefused", "; ".join(shrinks), degraded=True)
    if refused:
        failed = "; ".join(f"{t.name}: {t.message}" for t in refused)
        return Verdict(False, "TopicError", f"Kafka refused topic changes: {failed}", degraded=True)
    count = len(seen.topic_sync.topics)
    return Verdict(True, "TopicsReady", f"{count} topics as the spec says (Kafka admin API)")


def topic_verdict(pipeline: Pipeline, rendered: Rendered, seen: Observation) -> Verdict:
    if rendered.topic_management == "admin":
        return admin_topic_verdict(seen)
    topics = [m for m in rendered.manifests if m["kind"] == "KafkaTopic"]
    if not topics:
        return Verdict(
            True,
            "Unmanaged",
            "topicManagement is unmanaged (no Strimzi cluster named): flowmill creates no "
            "topics and expects them to exist",
        )
    failed = [_key(m) for m in topics if _key(m) in seen.apply_errors]
    if failed:
        message = seen.apply_errors[failed[0]]
        return Verdict(False, "ApplyFailed", message, degraded=True)
    pending, errors = [], []
    for manifest in topics:
        live = seen.children.get(_key(manifest), {})
        status = live.get("status") or {}
        ready = _condition(status.get("conditions", []), "Ready")
        current = status.get("observedGeneration", 0) >= live.get("metadata", {}).get(
            "generation", 1
        )
        if ready and ready.get("status") == "True" and current:
            continue
        topic = manifest["spec"]["topicName"]
        if ready and ready.get("status") == "False" and current:
            errors.append(f"{topic}: {ready.get('message') or ready.get('reason')}")
        else:
            pending.append(topic)
    if errors:
        message = "Strimzi rejected topics: " + "; ".join(errors)
        return Verdict(False, "TopicError", message, degraded=True)
    if pending:
        return Verdict(
            False,
            "TopicsPending",
            f"waiting for Strimzi's topic operator to mark {len(pending)} of {len(topics)} "
            f"KafkaTopics Ready: {', '.join(pending)}",
        )
    return Verdict(True, "TopicsReady", f"{len(topics)} KafkaTopics Ready")


def deployment_ready(live: Obj | None) -> bool:
    if not live:
        return False
    spec, status = live.get("spec", {}), live.get("status") or {}
    desired = spec.get("replicas", 1)
    rolled_out = status.get("observedGeneration", 0) >= live["metadata"].get("generation", 1)
    return rolled_out and (
        desired == 0
        or (
            status.get("updatedReplicas", 0) >= desired
            and status.get("readyReplicas", 0) >= desired
        )
    )


def _stuck(live: Obj | None) -> str:
    progressing = _condition((live or {}).get("status", {}).get("conditions", []), "Progressing")
    if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        return f"Deployment {live['metadata']['name'] if live else '?'}: {progressing.get('message', '')}"
    return ""


def _deployments(rendered: Rendered, component: str) -> list[Obj]:
    return [
        m
        for m in rendered.manifests
        if m["kind"] == "Deployment"
        and m["metadata"]["labels"].get(naming.COMPONENT_LABEL) == component
    ]


def workers_verdict(rendered: Rendered, seen: Observation) -> Verdict:
    parts, problems, failed = [], [], []
    ready_total = 0
    for component in ("source", "step"):
        manifests = _deployments(rendered, component)
        ready = 0
        for m in manifests:
            key = _key(m)
            if key in seen.apply_errors:
                failed.append(seen.apply_errors[key])
            live = seen.children.get(key)
            ready += deployment_ready(live)
            if stuck := _stuck(live):
                problems.append(stuck)
        ready_total += ready
        if manifests:
            parts.append(f"{ready}/{len(manifests)} {component}s ready")
    total = len(_deployments(rendered, "source")) + len(_deployments(rendered, "step"))
    if failed:
        return Verdict(False, "ApplyFailed", failed[0], degraded=True)
    if problems:
        return Verdict(False, "RolloutStuck", problems[0], degraded=True)
    if ready_total < total:
        return Verdict(False, "WorkersPending", ", ".join(parts) + " (every desired replica ready)")
    return Verdict(True, "WorkersReady", ", ".join(parts) or "no sources or steps")


def api_verdict(pipeline: Pipeline, rendered: Rendered, seen: Observation) -> Verdict:
    if not pipeline.spec.api.enabled:
        return Verdict(True, "Disabled", "spec.api.enabled is false")
    manifests = _deployments(rendered, "api")
    service = [m for m in rendered.manifests if m["kind"] == "Service"]
    for m in manifests + service:
        if (error := seen.apply_errors.get(_key(m))) is not None:
            return Verdict(False, "ApplyFailed", error, degraded=True)
    live = seen.children.get(_key(manifests[0]))
    if stuck := _stuck(live):
        return Verdict(False, "RolloutStuck", stuck, degraded=True)
    if not deployment_ready(live):
        status = (live or {}).get("status") or {}
        desired = (live or {}).get("spec", {}).get("replicas", 1)
        return Verdict(
            False,
            "ApiPending",
            f"{status.get('readyReplicas', 0)}/{desired} API replicas ready",
        )
    return Verdict(True, "ApiReady", "every API replica is ready")


def _key(manifest: Obj) -> ChildKey:
    meta = manifest["metadata"]
    return (manifest["kind"], meta.get("namespace", ""), meta["name"])


def parse_quantity(value: str | int | float | None) -> float | None:
    """A Kubernetes quantity such as 1500m or 12k as a number."""
    if value is None:
        return None
    text = str(value)
    factors = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    try:
        if text and text[-1] in factors:
            return float(text[:-1]) * factors[text[-1]]
        return float(text)
    except ValueError:
        return None


def hpa_lag(hpa: Obj | None) -> int | None:
    """Total lag an HPA last saw: its per-replica average times its replicas."""
    status = (hpa or {}).get("status") or {}
    for metric in status.get("currentMetrics") or []:
        current = (metric.get("external") or {}).get("current") or {}
        average = parse_quantity(current.get("averageValue"))
        if average is not None:
            return round(average * max(status.get("currentReplicas", 1), 1))
        value = parse_quantity(current.get("value"))
        if value is not None:
            return round(value)
    return None


def _pod_restarts(pod: Obj) -> int:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return sum(int(c.get("restartCount", 0)) for c in statuses)


def restarts(seen: Observation, component: str, name: str | None = None) -> int | None:
    """Container restarts of the pods of one part (a step or source by name, the API),
    counted by the kubelet; None when the pods could not be listed."""
    if seen.pods is None:
        return None
    label = {"step": naming.STEP_LABEL, "source": naming.SOURCE_LABEL}.get(component)
    total = 0
    for pod in seen.pods:
        labels = pod.get("metadata", {}).get("labels") or {}
        if labels.get(naming.COMPONENT_LABEL) != component:
            continue
        if label is not None and labels.get(label) != name:
            continue
        total += _pod_restarts(pod)
    return total


def restart_events(previous: Obj, status: Obj, seen: Observation) -> list[tuple[str, str, str]]:
    """A Warning Event when the Pipeline's pods restarted since the last status: how many,
    and the newest terminations with their reason and exit code (OOMKilled, Error 1)."""
    before, now_ = previous.get("restarts"), status.get("restarts")
    if before is None or now_ is None or now_ <= before:
        return []
    ended = []
    for pod in seen.pods or []:
        for c in (pod.get("status") or {}).get("containerStatuses") or []:
            last = (c.get("lastState") or {}).get("terminated")
            if c.get("restartCount") and last:
                what = f"{last.get('reason') or 'exited'} (exit {last.get('exitCode')})"
                ended.append((last.get("finishedAt") or "", f"{pod['metadata']['name']}: {what}"))
    ended.sort(reverse=True)
    newest = "; ".join(text for _, text in ended[: min(3, now_ - before)])
    message = f"{now_ - before} container restart(s), {now_} in all"
    return [("Warning", "WorkerRestarted", f"{message}: {newest}" if newest else message)]


def dead_letter_events(previous: Obj, status: Obj, seen: Observation) -> list[tuple[str, str, str]]:
    """A Warning Event when the dead-letter topics grew since the last status, with the
    newest reason: `kubectl describe pipeline` then says what is being refused."""
    before, now_ = previous.get("deadLetters"), status.get("deadLetters")
    if now_ is None or now_ <= (before or 0) or seen.dead_letters is None:
        return []
    grown = [
        f"{topic} holds {count.records}"
        + (f" (newest: {count.newest_reason[:300]})" if count.newest_reason else "")
        for topic, count in seen.dead_letters.items()
        if count.records
    ]
    message = f"{now_ - (before or 0)} new dead letter(s): " + "; ".join(grown)
    return [("Warning", "DeadLetters", message[:1000])]


def step_statuses(pipeline: Pipeline, rendered: Rendered, seen: Observation) -> list[Obj]:
    out = []
    for step in pipeline.spec.steps:
        scale = rendered.scales[step.name]
        name = naming.step_deployment(pipeline.name, step.name)
        live = next(
            (v for k, v in seen.children.items() if k[0] == "Deployment" and k[2] == name), None
        )
        status = (live or {}).get("status") or {}
        entry: Obj = {
            "name": step.name,
            "replicas": status.get("replicas", 0),
            "readyReplicas": status.get("readyReplicas", 0),
            "maxReplicas": scale.max_replicas,
            "lag": hpa_lag(seen.autoscalers.get(step.name)),
            "restarts": restarts(seen, "step", step.name),
        }
        if scale.message:
            entry["message"] = scale.message
        out.append({k: v for k, v in entry.items() if v is not None})
    return out


def merge_conditions(previous: list[Obj], current: list[Obj], generation: int) -> list[Obj]:
    """Carry lastTransitionTime over when a condition's status did not change."""
    before = {c.get("type"): c for c in previous or []}
    merged = []
    for condition in current:
        old = before.get(condition["type"])
        since = (
            old.get("lastTransitionTime")
            if old and old.get("status") == condition["status"] and old.get("lastTransitionTime")
            else now()
        )
        merged.append({**condition, "lastTransitionTime": since, "observedGeneration": generation})
    return merged


def replay_record(
    pipeline: Pipeline, rendered: Rendered, seen: Observation, namespace: str, previous: Obj
) -> Obj | None:
    """status.replay: the request's progress, read off its reset Job (a Job that
    succeeded once is gone after the step is scaled back: the record then stays)."""
    request = pipeline.spec.replay
    if request is None:
        return None
    before = previous.get("replay") or {}
    job_name = naming.replay_job(pipeline.name, request.step, request.id)
    if before.get("id") == request.id and before.get("phase") == "Succeeded":
        return dict(before)
    record: Obj = {"id": request.id, "step": request.step, "phase": "Replaying", "job": job_name}
    key = ("Job", namespace, job_name)
    if key in seen.apply_errors:
        return {**record, "message": seen.apply_errors[key]}
    job = seen.children.get(key) or {}
    state = job.get("status") or {}
    done = {c.get("type"): c for c in state.get("conditions") or [] if c.get("status") == "True"}
    if "Complete" in done or state.get("succeeded"):
        return {**record, "phase": "Succeeded", "message": "positions and table reset"}
    if "Failed" in done:
        failed = done["Failed"]
        reason = failed.get("reason") or "Failed"
        detail = failed.get("message") or f"{state.get('failed', 0)} pods failed"
        return {**record, "phase": "Failed", "message": f"{reason}: {detail}"}
    return {**record, "message": "the step is at zero; the reset Job runs"}


def replayed_id(previous: Obj) -> str | None:
    """The id of the replay request the operator finished: render leaves it out."""
    before = previous.get("replay") or {}
    return before.get("id") if before.get("phase") == "Succeeded" else None


def condition(kind: str, ok: bool, reason: str, message: str) -> Obj:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message}


def pipeline_status(
    pipeline: Pipeline,
    rendered: Rendered,
    seen: Observation,
    *,
    namespace: str,
    generation: int,
    previous: Obj,
    prune_errors: list[str],
) -> Obj:
    topics = topic_verdict(pipeline, rendered, seen)
    workers = workers_verdict(rendered, seen)
    api = api_verdict(pipeline, rendered, seen)
    verdicts = {"TopicsReady": topics, "WorkersReady": workers, "ApiReady": api}
    problems = [(v.reason, v.message) for v in verdicts.values() if v.degraded]
    problems += [("PruneFailed", e) for e in prune_errors]
    not_ready = [(k, v) for k, v in verdicts.items() if not v.ready]
    replay = replay_record(pipeline, rendered, seen, namespace, previous)
    if replay is not None and replay["phase"] == "Failed":
        problems.append(
            (
                "ReplayFailed",
                f"replay {replay['id']} of step {replay['step']} failed ({replay['message']}); "
                "the step stays at zero until spec.replay gets a new id or is removed",
            )
        )
    tables, tables_waiting = tables_condition(seen)
    if tables_waiting is not None and tables_waiting.degraded:
        problems.append((tables_waiting.reason, tables_waiting.message))
    elif tables_waiting is not None:
        not_ready.append(("TablesExact", tables_waiting))
    if not_ready:
        first = not_ready[0][1]
        ready = condition("Ready", False, first.reason, "; ".join(v.message for _, v in not_ready))
    else:
        ready = condition("Ready", True, "AllReady", "topics, workers and API are ready")
    if problems:
        degraded = condition("Degraded", True, problems[0][0], "; ".join(m for _, m in problems))
    else:
        degraded = condition("Degraded", False, "AsExpected", "nothing needs attention")
    conditions = [ready] + [condition(k, v.ready, v.reason, v.message) for k, v in verdicts.items()]
    conditions += [tables, degraded]
    steps = step_statuses(pipeline, rendered, seen)
    ready_steps = sum(
        deployment_ready(seen.children.get(("Deployment", namespace, name)))
        for name in (naming.step_deployment(pipeline.name, s.name) for s in pipeline.spec.steps)
    )
    lags = [s["lag"] for s in steps if "lag" in s]
    parts: list[tuple[str, str | None]] = [("source", s.name) for s in pipeline.spec.sources]
    parts += [("step", s.name) for s in pipeline.spec.steps] + [("api", None)]
    counted = [restarts(seen, kind, name) for kind, name in parts]
    endpoint = None
    if pipeline.spec.api.enabled:
        service = naming.api_deployment(pipeline.name)
        endpoint = f"http://{service}.{namespace}.svc:{API_PORT}"
    return {
        "observedGeneration": generation,
        "phase": (
            "Paused"
            if pipeline.spec.paused
            else "Replaying"
            if replay is not None and replay["phase"] != "Succeeded"
            else "Running"
        ),
        # None clears it in the merge patch once the request is removed.
        "replay": replay,
        "conditions": merge_conditions(previous.get("conditions", []), conditions, generation),
        "steps": steps,
        "stepsReady": f"{ready_steps}/{len(pipeline.spec.steps)}",
        # None clears the field in a merge patch: no number is better than a stale one.
        "lag": sum(lags) if lags else None,
        "restarts": None if seen.pods is None else sum(c or 0 for c in counted),
        "deadLetters": (
            None
            if seen.dead_letters is None
            else sum(c.records for c in seen.dead_letters.values())
        ),
        "endpoint": endpoint,
        "topicManagement": rendered.topic_management,
        "topics": _topic_record(rendered, seen, previous),
        **table_records(pipeline, seen),
    }


def _partitions(entries: list[Obj], detail: str) -> str:
    return ", ".join(f"{e['topic']}/{e['partition']} {detail.format(**e)}" for e in entries)


def tables_condition(seen: Observation) -> tuple[Obj, Verdict | None]:
    """TablesExact: whether every serving table answers exactly (the workers' status
    hashes, as the API's X-Flowmill-Table-State says), and the Verdict it adds: a
    rebuild is waited for (Ready False), an incomplete table needs a human (Degraded)."""
    states = seen.tables
    if states is None:
        return condition("TablesExact", True, "NoTables", "the Pipeline serves no tables"), None
    if states.unknown is not None:
        return {
            "type": "TablesExact",
            "status": "Unknown",
            "reason": states.unknown,
            "message": states.unknown_reason,
        }, None
    incomplete, rebuilding = [], []
    for table, state in states.tables.items():
        if state is not None and state["incomplete"]:
            where = _partitions(state["incomplete"], "before offset {missing_before_offset}")
            incomplete.append(f"table {table}: Kafka no longer held {where}")
        if state is not None and state["rebuilding"]:
            where = _partitions(state["rebuilding"], "until offset {until_offset}")
            rebuilding.append(f"table {table}: {where}")
    if incomplete:
        message = (
            "incomplete for good, the Redis state having been lost and rebuilt from what "
            "Kafka still held (" + "; ".join(incomplete) + "): those offsets' data is missing "
            "from the answers; keep Redis persistent and Kafka retention longer than the "
            "oldest window served (docs/reliability.md)"
        )
        verdict = Verdict(False, "TablesIncomplete", message, degraded=True)
    elif rebuilding:
        message = (
            "rebuilding from Kafka after the Redis state was lost (" + "; ".join(rebuilding) + "); "
            "the step is unready and the API marks the answers rebuilding until it catches up"
        )
        verdict = Verdict(False, "TablesRebuilding", message)
    else:
        count = len(states.tables)
        return condition("TablesExact", True, "AllExact", f"{count} table(s) exact"), None
    return condition("TablesExact", False, verdict.reason, verdict.message), verdict


def table_records(pipeline: Pipeline, seen: Observation) -> Obj:
    """status.tables (each table's state, with the partitions that make it so) and
    status.tablesState (the worst of them: the printer column)."""
    states = seen.tables
    if states is None:
        return {"tables": None, "tablesState": None}
    records: list[Obj] = []
    for step, table in pipeline.tables():
        record: Obj = {"name": table, "step": step.name}
        state = states.tables.get(table)
        if states.unknown is not None:
            record["state"] = "unknown"
        else:
            record["state"] = serving.table_status(state)
        if state is not None and state["rebuilding"]:
            record["rebuilding"] = [
                {"topic": e["topic"], "partition": e["partition"], "untilOffset": e["until_offset"]}
                for e in state["rebuilding"]
            ]
        if state is not None and state["incomplete"]:
            record["incomplete"] = [
                {
                    "topic": e["topic"],
                    "partition": e["partition"],
                    "missingBeforeOffset": e["missing_before_offset"],
                    # Left out when unknown: a null would differ from the stored status.
                    **({"detectedMs": e["detected_ms"]} if e["detected_ms"] is not None else {}),
                }
                for e in state["incomplete"]
            ]
        records.append(record)
    found = {r["state"] for r in records}
    worst = next(s for s in ("incomplete", "rebuilding", "unknown", "exact") if s in found)
    return {"tables": records, "tablesState": worst}


def _topic_record(rendered: Rendered, seen: Observation, previous: Obj) -> list[Obj] | None:
    """admin mode: each topic's state and whether the operator created it. The status
    is the only record of that (Pipeline deletion reads it to delete exactly those
    topics), so when Kafka could not be asked, the last record is kept as it was."""
    if rendered.topic_management != "admin":
        return None
    if seen.topic_sync is None:
        return previous.get("topics")
    return [t.to_status() for t in seen.topic_sync.topics]


def invalid_status(message: str, *, generation: int, previous: Obj) -> Obj:
    """Ready=False naming the field; the other conditions keep describing the children
    of the last valid generation, which keep running untouched."""
    kept = [
        c
        for c in previous.get("conditions", [])
        if c.get("type") in ("TopicsReady", "WorkersReady", "ApiReady")
    ]
    kept_types = {c["type"] for c in kept}
    unknown = [
        {"type": t, "status": "Unknown", "reason": "InvalidSpec", "message": "not reconciled"}
        for t in ("TopicsReady", "WorkersReady", "ApiReady")
        if t not in kept_types
    ]
    current = [
        condition("Ready", False, "InvalidSpec", message),
        *kept,
        *unknown,
        condition("Degraded", True, "InvalidSpec", message),
    ]
    merged = merge_conditions(previous.get("conditions", []), current, generation)
    for c in merged:
        if c["type"] in kept_types:  # these describe an older generation
            c["observedGeneration"] = next(
                (p.get("observedGeneration") for p in kept if p["type"] == c["type"]), generation
            )
    return {"observedGeneration": generation, "conditions": merged}
