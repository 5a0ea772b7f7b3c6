"""The one settings style of the operator and the API: pydantic-settings models read from
FLOWMILL_* environment variables, with command-line flags over them.

A field `x` is read from FLOWMILL_X unless it names its variable (`validation_alias`); an
empty variable counts as unset, since the Helm chart and the renderer leave optional
values empty. Variables no field reads are ignored: one environment carries several
components' settings.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "FLOWMILL_"


class SettingsInvalid(ValueError):
    """An environment variable (or flag) holds a value its setting refuses."""


class FlowmillSettings(BaseSettings):
    """Base of every component's settings."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    @classmethod
    def from_env(cls, **flags: Any) -> Self:
        """The environment, with the flags that were given (not None) over it."""
        try:
            return cls(**{name: value for name, value in flags.items() if value is not None})
        except ValidationError as err:
            raise SettingsInvalid("; ".join(cls._describe(e) for e in err.errors())) from None

    @classmethod
    def _describe(cls, error: Any) -> str:
        if not error["loc"]:
            return str(error["msg"])
        where = str(error["loc"][0])  # a field's name, or the variable it names
        variable = cls.env_name(where) if where in cls.model_fields else where
        return f"{variable}: {error['msg']}"

    @classmethod
    def env_name(cls, field: str) -> str:
        """The variable a field is read from."""
        alias = cls.model_fields[field].validation_alias
        if isinstance(alias, str):
            return alias
        return f"{cls.model_config.get('env_prefix', ENV_PREFIX)}{field.upper()}"

    @classmethod
    def env_names(cls) -> set[str]:
        """Every variable these settings read."""
        return {cls.env_name(field) for field in cls.model_fields}


def split_list(value: object) -> object:
    """A comma-separated variable as a tuple (flags and code pass sequences through)."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value
