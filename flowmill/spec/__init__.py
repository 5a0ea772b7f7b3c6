"""The Pipeline spec: one set of pydantic models that the CRD, operator, workers and API
all read."""

from flowmill.spec.common import duration_seconds
from flowmill.spec.pipeline import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    Pipeline,
    PipelineSpec,
    TopicSpec,
)
from flowmill.spec.sinks import SinkSpec
from flowmill.spec.sources import SourceSpec
from flowmill.spec.status import PipelineStatus
from flowmill.spec.steps import Aggregate, StepSpec, WindowSpec

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "Aggregate",
    "Pipeline",
    "PipelineSpec",
    "PipelineStatus",
    "SinkSpec",
    "SourceSpec",
    "StepSpec",
    "TopicSpec",
    "WindowSpec",
    "duration_seconds",
]
