"""An expression that fails on one event dead-letters that event (BadEvent) instead of
ending the step: a map literal's missing key, a missing field, a division by zero."""

from __future__ import annotations

import pytest

from flowmill_workers.events import BadEvent
from flowmill_workers.steps.transform import compile_expression


@pytest.mark.parametrize(
    ("expression", "event"),
    [
        ('{"72": "west", "79": "east"}[station_id]', {"station_id": "9999"}),
        ("missing_field + 1", {"other": 1}),
        ("total / count", {"total": 4, "count": 0}),
    ],
)
def test_a_failing_expression_is_the_events_fault(expression: str, event: dict) -> None:
    evaluate = compile_expression(expression)
    with pytest.raises(BadEvent, match="failed"):
        evaluate(event)


def test_the_same_expression_still_answers_for_a_good_event() -> None:
    evaluate = compile_expression('{"72": "west", "79": "east"}[station_id]')
    assert evaluate({"station_id": "72"}) == "west"
