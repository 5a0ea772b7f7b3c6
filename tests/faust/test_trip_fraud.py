"""The trip-fraud example end to end under `flowmill run`: built-in validate, latest and
window steps around the Faust agent; the flags, the served latest flag per rider and the
hourly counts per rule against the rules recomputed in plain Python from the data file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from tests.examples.harness import (
    api,
    example_copy,
    local_run,
    read_topic,
    row,
    source,
    step,
    table_path,
    topic,
    wait_consumed,
    wait_done,
    wait_matching,
)
from tests.faust.harness import (
    AGENT_CODE,
    expected_serving,
    flags_per_rule,
    latest_flags,
    valid_trips,
)
from tests.harness.waiting import wait_for


def fast_local(doc: dict[str, Any]) -> None:
    source(doc, "requests")["fileReplay"]["rate"] = 1000
    # The copy lives in a temporary folder; the agent's code stays in the repository.
    step(doc, "fraud-rules")["faust"]["code"]["path"] = str(AGENT_CODE)


def test_trip_fraud_rules_served(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    manifest = example_copy("trip-fraud", tmp_path, fast_local)
    trips = valid_trips()
    expected = expected_serving(trips)
    assert len(trips) == 222 and len(expected.flags) > 20
    assert {rule for _, _, rule in expected.flags} == {"burst", "impossible_speed"}

    with local_run(manifest, kafka_broker, redis_server, tmp_path / "run") as run:
        wait_done(run, ["requests"])
        wait_consumed(run, "fraud-rules", len(trips))
        out = read_topic(kafka_broker.bootstrap_servers, topic(run, "fraud-flags"))
        got = [(r["event"]["rider_id"], r["event"]["trip_id"], r["event"]["rule"]) for r in out]
        assert sorted(got) == sorted(expected.flags)  # no run-time failure: each flag once
        with api(run) as http:
            wait_matching(
                "latest flag per rider",
                lambda: latest_flags(http, table_path(run, "flagged_riders")),
                expected.latest,
                exact={"trip_id", "rule"},
            )
            wait_matching(
                "flags per rule and hour",
                lambda: flags_per_rule(http, table_path(run, "flags_per_rule")),
                expected.per_rule,
                exact={"flags", "riders"},
            )
        wait_for(
            lambda: row(run, "step/fraud-rules").state == "ready",
            10,
            "the Faust step's status row ready",
        )
