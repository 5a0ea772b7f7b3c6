"""The Pipeline spec: one set of pydantic models that the CRD, operator, workers and API
all read."""

from flowmill.spec.common import duration_seconds
from flowmill.spec.faust_step import FaustSpec
from flowmill.spec.launch import (
    API_PORT,
    ENV_API_KEYS_DIR,
    ENV_BOOTSTRAP_SERVERS,
    ENV_REDIS_URL,
    FAUST_CODE_MOUNT,
    POD_LISTEN_ADDRESS,
    RESERVED_ENV,
    WORKER_METRICS_PORT,
    WORKING_DIR,
    api_args,
    worker_args,
)
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
from flowmill.spec.pod_template import PodTemplate
from flowmill.spec.sinks import SinkSpec
from flowmill.spec.sources import SourceSpec
from flowmill.spec.status import PipelineStatus
from flowmill.spec.steps import Aggregate, SessionSpec, StepAutoscaling, StepSpec, WindowSpec
from flowmill.spec.topology import (
    PipelineTopic,
    all_topics,
    changelog_topic,
    consumer_group,
    faust_app_id,
    faust_changelog_topic,
    mirror_group,
    source_transactional_id,
    step_transactional_id,
    strimzi_bootstrap_servers,
)

__all__ = [
    "API_PORT",
    "API_VERSION",
    "ENV_API_KEYS_DIR",
    "ENV_BOOTSTRAP_SERVERS",
    "ENV_REDIS_URL",
    "FAUST_CODE_MOUNT",
    "GROUP",
    "KIND",
    "PLURAL",
    "POD_LISTEN_ADDRESS",
    "RESERVED_ENV",
    "VERSION",
    "WORKER_METRICS_PORT",
    "WORKING_DIR",
    "Aggregate",
    "FaustSpec",
    "Pipeline",
    "PipelineSpec",
    "PipelineStatus",
    "PipelineTopic",
    "PodTemplate",
    "SessionSpec",
    "SinkSpec",
    "SourceSpec",
    "StepAutoscaling",
    "StepSpec",
    "TopicSpec",
    "WindowSpec",
    "all_topics",
    "api_args",
    "changelog_topic",
    "consumer_group",
    "duration_seconds",
    "faust_app_id",
    "faust_changelog_topic",
    "mirror_group",
    "source_transactional_id",
    "step_transactional_id",
    "strimzi_bootstrap_servers",
    "worker_args",
]
