"""The stages of a step, compiled once: validate, filter, map, lookup, function.

Each event goes through them in that order; a stage raises BadEvent (dead-lettered with
the reason) or returns the events that continue (none when filtered out).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import cel

from flowmill.spec import StepSpec
from flowmill.spec.json_schema import event_validator, first_violation
from flowmill_workers.events import BadEvent, Event

Stage = Callable[[Event], list[Event]]


def compile_expression(expression: str) -> Callable[[Event], Any]:
    """A CEL program as a function of the event; evaluation errors become BadEvent."""
    program = cel.compile(expression)

    def evaluate(event: Event) -> Any:
        try:
            return program.execute(event)
        # LookupError: a map literal's missing key (a station not in a region map) raises
        # KeyError; ArithmeticError: division by zero, overflow. All are the event's fault.
        except (RuntimeError, ValueError, TypeError, LookupError, ArithmeticError) as err:
            raise BadEvent(f"expression {expression!r} failed: {err}") from None

    return evaluate


def _validate_stage(schema: dict[str, Any]) -> Stage:
    # The spec's validator: RE2 patterns (no ReDoS) and no $ref ever fetched (no SSRF).
    validator = event_validator(schema)

    def stage(event: Event) -> list[Event]:
        reason = first_violation(validator, event)
        if reason is not None:
            raise BadEvent(reason)
        return [event]

    return stage


def _filter_stage(expression: str) -> Stage:
    predicate = compile_expression(expression)

    def stage(event: Event) -> list[Event]:
        result = predicate(event)
        if not isinstance(result, bool):
            raise BadEvent(f"filter {expression!r} returned {type(result).__name__}, not bool")
        return [event] if result else []

    return stage


def _map_stage(fields: dict[str, str]) -> Stage:
    compiled = [(name, compile_expression(expr)) for name, expr in fields.items()]

    def stage(event: Event) -> list[Event]:
        # Expressions see the event as it came in, so their order in the manifest does not
        # matter (no field sees another field's new value).
        updates = {name: fn(event) for name, fn in compiled}
        return [{**event, **updates}]

    return stage


def load_callable(reference: str) -> Callable[[Event], Any]:
    """`package.module:function` imported from the worker's Python path."""
    module_name, _, attribute = reference.partition(":")
    module = importlib.import_module(module_name)
    function = getattr(module, attribute)
    if not callable(function):
        raise TypeError(f"{reference} is not callable")
    return function


def _function_stage(reference: str) -> Stage:
    function = load_callable(reference)

    def stage(event: Event) -> list[Event]:
        try:
            result = function(event)
        except Exception as err:  # the user's code: any failure dead-letters the event
            raise BadEvent(f"function {reference} raised {type(err).__name__}: {err}") from None
        if result is None:
            return []
        if isinstance(result, dict):
            return [result]
        if isinstance(result, list) and all(isinstance(r, dict) for r in result):
            return result
        raise BadEvent(f"function {reference} returned {type(result).__name__}, not dict/list")

    return stage


def build_stages(step: StepSpec, lookup: Stage | None = None) -> list[Stage]:
    """The stages a step declares, in processing order; `lookup` is its lookup's
    enrichment (its reference table lives in the worker, steps.lookup)."""
    stages: list[Stage] = []
    if step.validate_ is not None:
        stages.append(_validate_stage(step.validate_.schema_))
    if step.filter:
        stages.append(_filter_stage(step.filter))
    if step.map:
        stages.append(_map_stage(step.map))
    if lookup is not None:
        stages.append(lookup)
    if step.function:
        stages.append(_function_stage(step.function))
    return stages


def run_stages(stages: list[Stage], event: Event) -> list[Event]:
    """Pass one event through every stage."""
    events = [event]
    for stage in stages:
        events = [out for e in events for out in stage(e)]
        if not events:
            break
    return events
