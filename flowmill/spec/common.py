"""Building blocks shared by every part of the Pipeline spec.

Every spec model derives from `SpecModel`: camelCase on the wire (the Kubernetes
convention), snake_case in Python, unknown fields rejected so a typo is an error rather
than a silently ignored setting, and attribute docstrings become the field descriptions
that `kubectl explain` shows.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

DURATION_PATTERN = _DURATION.pattern
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
TOPIC_PATTERN = r"^[a-zA-Z0-9._-]+$"
FIELD_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*$"

# The shapes below carry no description of their own: each field's docstring says what it
# means, and a type-level description would override it in the generated CRD.
MAX_DURATION = "3650d"
"""Longest duration any field accepts (ten years): longer ones overflow the timers and
datetimes that workers compute from them."""


def _at_most(limit: str) -> AfterValidator:
    def check(value: str) -> str:
        if _DURATION.match(value) and duration_seconds(value) > duration_seconds(limit):
            raise ValueError(f"{value} is too long: at most {limit}")
        return value

    return AfterValidator(check)


def _kafka_topic_name(value: str) -> str:
    if value in (".", ".."):
        raise ValueError(f"{value!r} is not a Kafka topic name (Kafka refuses '.' and '..')")
    return value


_DurationText = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=16)]
Duration = Annotated[_DurationText, _at_most(MAX_DURATION)]
WindowDuration = Annotated[_DurationText, _at_most("366d")]
"""A window's size or advance: at most a year."""
GraceDuration = Annotated[_DurationText, _at_most("30d")]
"""How long late or unmatched events are waited for: at most 30 days."""
Name = Annotated[str, Field(pattern=NAME_PATTERN, min_length=1, max_length=40)]
TopicName = Annotated[
    str,
    Field(pattern=TOPIC_PATTERN, min_length=1, max_length=200),
    AfterValidator(_kafka_topic_name),
]
FieldPath = Annotated[str, Field(pattern=FIELD_PATTERN, min_length=1, max_length=200)]
Expression = Annotated[str, Field(min_length=1, max_length=2000)]


def duration_seconds(value: str) -> float:
    """Seconds in a spec duration such as `1m` or `250ms`."""
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"not a duration: {value!r} (expected e.g. 30s, 1m, 24h)")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


_NUMBERS: tuple[Any, ...] = (int, float, int | None, float | None)


class SpecModel(BaseModel):
    """Base of every spec model: camelCase aliases, strict about unknown fields."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        frozen=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, data: Any) -> Any:
        # YAML's `true` would pass as 1 (pydantic's lax mode counts a bool as an int):
        # `partitions: true` is a mistake to report, not a topic of one partition.
        if not isinstance(data, dict):
            return data
        errors: list[InitErrorDetails] = []
        for name, field in cls.model_fields.items():
            key = field.alias or name
            value = data.get(key, data.get(name))
            if isinstance(value, bool) and field.annotation in _NUMBERS:
                errors.append(
                    {
                        "type": PydanticCustomError(
                            "bool_not_number",
                            "expected a number, got {value}",
                            {"value": str(value).lower()},
                        ),
                        "loc": (key,),
                        "input": value,
                    }
                )
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return data

    def to_manifest(self) -> dict[str, Any]:
        """The camelCase dict a user would write, with unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def cel_rule(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """An `x-kubernetes-validations` entry; the apiserver checks it on every write."""
    # JsonDict, not dict[str, str]: a model's json_schema_extra holds it.
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def exactly_one_of_rule(fields: list[str]) -> str:
    """CEL that holds when exactly one of the optional `fields` is set."""
    return "[" + ", ".join(f"has(self.{f})" for f in fields) + "].filter(x, x).size() == 1"


class SecretKeyRef(SpecModel):
    """A key of a Secret in the Pipeline's namespace."""

    name: Name
    """Secret name."""
    key: str = Field(min_length=1, max_length=253)
    """Key inside the Secret."""
