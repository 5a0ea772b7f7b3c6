"""Replay a step from a time or an offset (docs/replay.md): recompute it as a fresh run
over its input from there on would.

While the step's workers are stopped (paused: a local run stops them, the operator scales
them to zero), `reset_step` moves every position the step has to the replay's start, in
an order that leaves readers told the truth at each moment:

1. the consumer group's committed offsets become the replay's offsets: a Kafka-sink
   step's position, and every step's lag. Kafka refuses that while a member is in the
   group, which is the check that the step is really stopped;
2. the table's status hash marks each partition with something to recompute as
   `rebuilding` up to where the step had got (the API says `rebuilding` from now on);
3. the table's data is deleted (every key under its prefix but its status), and the
   step's window outbox (records not yet in its Kafka topic: the replay emits them again);
4. the step's Redis checkpoints become the same offsets, with no watermark (as a
   fresh partition has);
5. the change is announced on the table's changes channel, so no API replica serves an
   answer it read before.

When the workers start again they resume from those checkpoints (or offsets); each
partition's `rebuilding` mark goes when its step passes the offset it names, as after a
lost Redis (docs/reliability.md), so the table is exact again once the step has caught up.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flowmill import serving
from flowmill.kafka_security import PLAINTEXT, KafkaClientSecurity
from flowmill.spec import Pipeline, StepSpec, consumer_group

Partition = tuple[str, int]


class ReplayRefused(ValueError):
    """The step cannot be replayed (as it is, or from there); the message says why."""


class GroupBusy(ReplayRefused):
    """Kafka refused to move the group's offsets: a member is still in it (a worker that
    is stopping leaves it within its session timeout, so this one is worth waiting out)."""


@dataclass
class ReplayPlan:
    """Where each input partition of a step restarts, and where it had got."""

    step: str
    start: dict[Partition, int]
    reached: dict[Partition, int] = field(default_factory=dict)
    """The step's position before the reset (Redis checkpoint, else committed offset)."""

    def describe(self) -> str:
        return ", ".join(
            f"{topic}-{p}: {self.reached.get((topic, p), '-')} -> {offset}"
            for (topic, p), offset in sorted(self.start.items())
        )


def parse_time_ms(text: str) -> int:
    """ISO 8601 (no zone means UTC) or epoch milliseconds."""
    if text.isdigit():
        return int(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def check_replayable(step: StepSpec) -> None:
    """Steps whose state is not theirs alone to reset are refused."""
    if step.faust is not None:
        raise ReplayRefused(f"step {step.name} is a Faust agent: its state is the agent's")
    if step.correlate is not None:
        raise ReplayRefused(
            f"step {step.name} joins two topics (correlate): its pending events are in a "
            "changelog a replay would contradict"
        )
    if step.sink is not None and step.sink.parquet is not None:
        raise ReplayRefused(
            f"step {step.name} writes a Parquet lake: its files are named after the offsets "
            "they hold; replaying would write them again"
        )


def _consumer(bootstrap: str, security: KafkaClientSecurity, group: str | None = None) -> Any:
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        isolation_level="read_committed",
        **security.kwargs(),
    )


def plan_replay(
    pipeline: Pipeline,
    step_name: str,
    bootstrap: str,
    *,
    from_time_ms: int | None = None,
    from_offset: int | None = None,
    security: KafkaClientSecurity = PLAINTEXT,
) -> ReplayPlan:
    """Each input partition's first offset at or after `from_time_ms` (by record time;
    the end when none is), or `from_offset` kept within what Kafka holds."""
    step = pipeline.spec.step(step_name)
    check_replayable(step)
    if (from_time_ms is None) == (from_offset is None):
        raise ReplayRefused("give a time or an offset to replay from")
    from kafka import TopicPartition

    topic = pipeline.spec.topic(step.from_)
    tps = [TopicPartition(topic.name, p) for p in range(topic.partitions)]
    consumer = _consumer(bootstrap, security)
    try:
        earliest = consumer.beginning_offsets(tps)
        ends = consumer.end_offsets(tps)
        if from_time_ms is not None:
            found = consumer.offsets_for_times({tp: from_time_ms for tp in tps})
            start = {tp: ends[tp] if found.get(tp) is None else found[tp].offset for tp in tps}
        else:
            assert from_offset is not None
            start = {tp: min(max(from_offset, earliest[tp]), ends[tp]) for tp in tps}
    finally:
        consumer.close()
    return ReplayPlan(step.name, {(tp.topic, tp.partition): o for tp, o in start.items()})


def reset_step(
    pipeline: Pipeline,
    plan: ReplayPlan,
    bootstrap: str,
    redis_url: str | None,
    security: KafkaClientSecurity = PLAINTEXT,
) -> ReplayPlan:
    """Move the stopped step's positions to the plan's (the module docstring's steps);
    returns the plan with where the step had got."""
    step = pipeline.spec.step(plan.step)
    check_replayable(step)
    table = step.sink.redis.table if step.sink and step.sink.redis else None
    client = None
    if table is not None:
        if redis_url is None:
            raise ReplayRefused(f"step {step.name} writes Redis: a Redis URL is needed")
        import redis

        client = redis.Redis.from_url(redis_url)
    try:
        plan.reached = _reached(pipeline, step, plan, bootstrap, security, client)
        # First, since Kafka refuses it while a worker is in the group: nothing else is
        # touched under a running step.
        _commit(consumer_group(pipeline.name, step.name), plan.start, bootstrap, security)
        if client is not None and table is not None:
            _mark_and_clear(client, pipeline.name, step.name, table, plan)
        if client is not None and table is not None:
            # As after every write: API replicas drop the answers they keep.
            client.publish(serving.changes_channel(pipeline.name, table), "")
    finally:
        if client is not None:
            client.close()
    return plan


def _reached(
    pipeline: Pipeline,
    step: StepSpec,
    plan: ReplayPlan,
    bootstrap: str,
    security: KafkaClientSecurity,
    client: Any,
) -> dict[Partition, int]:
    reached: dict[Partition, int] = {}
    if client is not None:
        saved = client.hgetall(serving.checkpoint_key(pipeline.name, step.name))
        for topic, p in plan.start:
            value = saved.get(f"{topic}:{p}".encode())
            if value is not None:
                reached[(topic, p)] = int(value)
    missing = [tp for tp in plan.start if tp not in reached]
    if missing:
        from kafka import TopicPartition

        consumer = _consumer(bootstrap, security, consumer_group(pipeline.name, step.name))
        try:
            for topic, p in missing:
                committed = consumer.committed(TopicPartition(topic, p))
                if committed is not None:
                    reached[(topic, p)] = committed
        finally:
            consumer.close()
    return reached


def _mark_and_clear(client: Any, pipeline: str, step: str, table: str, plan: ReplayPlan) -> None:
    status = serving.status_key(pipeline, table)
    marks = {
        serving.rebuilding_field(topic, p): str(plan.reached[(topic, p)])
        for (topic, p), offset in plan.start.items()
        if plan.reached.get((topic, p), 0) > offset
    }
    # Marked before anything is deleted: a reader never finds a partial table called exact.
    if marks:
        client.hset(status, mapping=marks)
    keep = {status.encode()}
    pattern = serving.table_prefix(pipeline, table) + ":*"
    doomed: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=1000):
        if key not in keep:
            doomed.append(key)
        if len(doomed) >= 1000:
            client.unlink(*doomed)
            doomed = []
    if doomed:
        client.unlink(*doomed)
    # Window records computed before the reset and not yet in Kafka: the replay
    # recomputes (and emits) them again.
    client.delete(serving.outbox_key(pipeline, step))
    checkpoint = serving.checkpoint_key(pipeline, step)
    pipe = client.pipeline(transaction=True)
    pipe.delete(checkpoint)
    pipe.hset(checkpoint, mapping={f"{t}:{p}": str(o) for (t, p), o in plan.start.items()})
    pipe.execute()


def _commit(
    group: str,
    offsets: Mapping[Partition, int],
    bootstrap: str,
    security: KafkaClientSecurity,
) -> None:
    from kafka import TopicPartition
    from kafka.errors import KafkaError
    from kafka.structs import OffsetAndMetadata

    consumer = _consumer(bootstrap, security, group)
    try:
        tps = {TopicPartition(t, p): o for (t, p), o in offsets.items()}
        consumer.assign(list(tps))
        try:
            consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in tps.items()})
        except KafkaError as err:
            raise GroupBusy(
                f"Kafka refused to move consumer group {group} ({type(err).__name__}): "
                "is a worker of the step still running?"
            ) from err
    finally:
        consumer.close()


# `flowmill replay-reset`: the reset as one process, what the operator's Job runs once the
# step's Deployment is at zero (docs/replay.md). Kafka and Redis come from the environment
# the workers have (connection_env, kafka_security_env), never from arguments.


def configure_reset(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", required=True, help="the Pipeline manifest")
    parser.add_argument("--step", required=True, help="the stopped step to reset")
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--from", dest="from_time", metavar="TIME", help="RFC 3339 or epoch ms")
    start.add_argument("--from-offset", type=int, metavar="N")
    parser.add_argument(
        "--wait",
        type=float,
        default=120.0,
        metavar="S",
        help="how long to wait for the step's workers to leave its consumer group",
    )
    parser.set_defaults(handler=_reset_handler)


def _reset_handler(args: argparse.Namespace) -> int:
    from flowmill.connections import ConnectionMissing, bootstrap_servers, redis_url
    from flowmill.manifest import PipelineInvalid, load_pipeline

    try:
        pipeline = load_pipeline(args.pipeline)
        step = pipeline.spec.step(args.step)
        servers = bootstrap_servers(pipeline)
        url = redis_url(pipeline) if step.sink and step.sink.redis else None
        from_time = None if args.from_time is None else parse_time_ms(args.from_time)
    except (PipelineInvalid, ConnectionMissing, KeyError, ValueError) as err:
        print(f"replay-reset: {err}", flush=True)
        return 2
    security = KafkaClientSecurity.from_env()
    deadline = time.monotonic() + args.wait
    while True:
        try:
            plan = plan_replay(
                pipeline,
                step.name,
                servers,
                from_time_ms=from_time,
                from_offset=args.from_offset,
                security=security,
            )
            reset_step(pipeline, plan, servers, url, security)
        except GroupBusy as err:
            if time.monotonic() >= deadline:
                print(f"replay-reset: {err}", flush=True)
                return 1
            time.sleep(2.0)
            continue
        except ReplayRefused as err:
            print(f"replay-reset: {err}", flush=True)
            return 1
        print(f"replayed {pipeline.name} step {step.name}: {plan.describe()}", flush=True)
        return 0
