"""The sources' pure rules, without Kafka: CSV typing, the generator's block seeding,
GBFS explode and stamping, and the mirror's re-keying."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from flowmill.spec import SourceSpec
from flowmill.spec.sources import GeneratorSource
from flowmill_workers.runtime.metrics import WorkerMetrics
from flowmill_workers.sources.base import SourceContext
from flowmill_workers.sources.file_replay import csv_value
from flowmill_workers.sources.generator import BLOCK, EventGenerator
from flowmill_workers.sources.http_poll import HttpPoll, PollFailed
from flowmill_workers.sources.kafka_mirror import KafkaMirror


@pytest.mark.parametrize(
    ("cell", "value"),
    [
        ("", None),
        ("0", 0),
        ("42", 42),
        ("-7", -7),
        ("123456789012345678", 123456789012345678),  # 18 digits: still a number
        ("1234567890123456789", "1234567890123456789"),  # 19: an identifier
        ("007", "007"),
        ("+5", "+5"),
        (" 5", " 5"),
        ("1_000", "1_000"),
        ("1.5", 1.5),
        ("-0.25", -0.25),
        (".5", 0.5),
        ("1.", 1.0),
        ("1e3", 1000.0),
        ("2.5E-4", 0.00025),
        ("1e999", "1e999"),  # not finite
        ("00.5", "00.5"),
        ("nan", "nan"),
        ("inf", "inf"),
        ("true", "true"),
        ("-", "-"),
        ("2025-05-01T12:00:00Z", "2025-05-01T12:00:00Z"),
        ("north", "north"),
    ],
)
def test_csv_typing_rule(cell: str, value: Any) -> None:
    got = csv_value(cell)
    assert got == value and type(got) is type(value)


def test_generator_resumes_mid_block_with_the_same_events() -> None:
    spec = GeneratorSource.model_validate(
        {
            "seed": 11,
            "fields": {
                "n": {"type": "sequence"},
                "x": {"type": "gauss", "precision": 3},
                "id": {"type": "uuid"},
                "c": {"type": "choice", "values": ["a", "b"]},
            },
        }
    )
    whole = EventGenerator(spec).events(0, 3 * BLOCK)
    pieces = EventGenerator(spec)
    split = pieces.events(0, 700) + pieces.events(700, 1000) + pieces.events(1700, 3 * BLOCK - 1700)
    assert split == whole
    for start in (0, 5, BLOCK - 1, BLOCK, BLOCK + 300):
        assert EventGenerator(spec).events(start, 50) == whole[start : start + 50]


def source(manifest: dict[str, Any], bootstrap: str = "127.0.0.1:1") -> SourceContext:
    spec = SourceSpec.model_validate({"name": "s", "to": "t", **manifest})
    return SourceContext("p", spec, WorkerMetrics("p", "s"), bootstrap)


def test_explode_copies_the_stamp_onto_elements_that_lack_it() -> None:
    poll = HttpPoll(
        source(
            {"httpPoll": {"url": "http://x/", "explode": "data.stations", "stampField": "meta.t"}}
        )
    )
    document = {"meta": {"t": 5}, "data": {"stations": [{"id": 1}, {"id": 2, "meta": {"t": 4}}, 3]}}
    assert poll._events(document) == [
        {"id": 1, "meta": {"t": 5}},
        {"id": 2, "meta": {"t": 4}},
        {"value": 3, "meta": {"t": 5}},
    ]
    with pytest.raises(PollFailed, match="not an array"):
        poll._events({"data": {"stations": {"id": 1}}})


def test_without_explode_the_document_is_one_event() -> None:
    poll = HttpPoll(source({"httpPoll": {"url": "http://x/"}}))
    assert poll._events({"a": 1}) == [{"a": 1}]
    assert poll._events([1, 2]) == [{"value": [1, 2]}]


def record(key: bytes | None, value: bytes | None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("up", 0, 0, 1000, 0, key, value, None, 0, 0, [])


def test_mirror_keeps_keys_unless_told_to_rekey() -> None:
    keep = KafkaMirror(source({"kafka": {"topic": "up"}}))
    assert keep._copy(record(b"k", b'{"v": 1}')) == (b"k", b'{"v": 1}', 1000)

    rekey = KafkaMirror(source({"key": "v", "kafka": {"topic": "up"}}))
    assert rekey._copy(record(b"k", json.dumps({"v": 7.0}).encode()))[0] == b"7"
    assert rekey._copy(record(b"k", b"not json"))[0] == b"k"
    assert rekey._copy(record(b"k", b'{"other": 1}'))[0] == b"k"
    assert rekey._copy(record(b"k", None)) == (b"k", None, 1000)


def test_mirror_uses_transactional_offsets_only_on_the_same_cluster() -> None:
    assert KafkaMirror(source({"kafka": {"topic": "up"}}, "a:1,b:2")).offsets_in_transaction
    same = source({"kafka": {"topic": "up", "bootstrapServers": "b:2, a:1"}}, "a:1,b:2")
    assert KafkaMirror(same).offsets_in_transaction
    other = source({"kafka": {"topic": "up", "bootstrapServers": "legacy:9092"}}, "a:1")
    assert not KafkaMirror(other).offsets_in_transaction
