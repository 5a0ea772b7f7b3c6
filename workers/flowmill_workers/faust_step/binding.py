"""Importing a user's Faust app as a step of a Pipeline.

The app is flowmill's to configure: its broker and the Kafka security (FLOWMILL_KAFKA_*), id (the step's consumer group, so also
its changelog topics' prefix), partitions and topic creation are set while the app is
constructed (Faust names a Table's changelog from the id when the Table is declared, so
setting them after the import is too late). Every topic the code creates is renamed to the
Pipeline topic faust.outputs maps it to, and the agent consumes the step's `from`. What
the code uses beyond that (an undeclared topic or Table, an agent that is not there)
stops the worker before it connects, naming the field to fix.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import AgentT, TopicT
from faust.types.auth import CredentialsT

from flowmill.kafka_security import PLAINTEXT, KafkaClientSecurity
from flowmill.spec import Pipeline, StepSpec, faust_app_id, faust_changelog_topic

SESSION_TIMEOUT_S = 10.0


class FaustStepError(RuntimeError):
    """The user's code does not fit the step's spec (or cannot be imported)."""


@dataclass(frozen=True)
class BoundApp:
    app: faust.App
    agent: AgentT
    input_topic: str
    output_topics: frozenset[str]


def broker_credentials(security: KafkaClientSecurity) -> CredentialsT | None:
    """The worker's Kafka security (FLOWMILL_KAFKA_*, flowmill/kafka_security.py) as
    Faust's broker_credentials, which its aiokafka consumer and producer turn back into
    the same client options the built-in workers pass (security_protocol, ssl_context,
    sasl_*): one client configuration for both kinds of step."""
    context = security.ssl_context()
    if security.protocol == "SSL":
        assert context is not None  # SSL always has a context
        return faust.SSLCredentials(context)
    if security.protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        assert security.password is not None  # checked by KafkaClientSecurity
        # With a context Faust's protocol is SASL_SSL, without one SASL_PLAINTEXT.
        return faust.SASLCredentials(
            username=security.username,
            password=security.password.get_secret_value(),
            mechanism=security.mechanism,
            ssl_context=context,
        )
    return None


def faust_settings(
    pipeline: Pipeline,
    step: StepSpec,
    bootstrap_servers: str,
    data_dir: str,
    security: KafkaClientSecurity = PLAINTEXT,
) -> dict[str, Any]:
    """What flowmill sets in the step's app, over what the code passed."""
    source = pipeline.spec.topic(step.from_)
    return {
        "broker": [f"kafka://{server.strip()}" for server in bootstrap_servers.split(",")],
        # None (PLAINTEXT) is Faust's own default.
        "broker_credentials": broker_credentials(security),
        # The operator or `flowmill run` created every topic (topology.all_topics), with the
        # partitions and configs the Pipeline says; Faust must neither create nor expect
        # others (no leader topic: a step's agent runs no leader-only timers).
        "topic_allow_declare": False,
        "topic_disable_leader": True,
        "topic_partitions": source.partitions,
        "topic_replication_factor": source.replicas,
        # Faust's web server would take a port per worker; flowmill's /metrics and probes
        # are on the worker port instead.
        "web_enabled": False,
        "datadir": data_dir,
        "consumer_auto_offset_reset": "earliest",
        # aiokafka's default, as the built-in workers have it: a worker killed without
        # leaving the group holds its partitions this long, not Faust's 60 s.
        "broker_session_timeout": SESSION_TIMEOUT_S,
    }


def bind_app(
    pipeline: Pipeline,
    step: StepSpec,
    bootstrap_servers: str,
    data_dir: str,
    code_path: str | None = None,
    security: KafkaClientSecurity = PLAINTEXT,
) -> BoundApp:
    """Import the step's app configured as the step (see the module docstring)."""
    spec = step.faust
    assert spec is not None
    where = f"spec.steps[{pipeline.spec.steps.index(step)}].faust"
    app_id = faust_app_id(pipeline.name, step.name)
    settings = faust_settings(pipeline, step, bootstrap_servers, data_dir, security)
    renames = dict(spec.outputs)
    created: list[TopicT] = []
    if code_path is not None:
        sys.path.insert(0, code_path)
    module_name, _, attribute = spec.app.partition(":")
    with _configured_apps(app_id, settings, renames, created):
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            hint = f" (looked first in {code_path})" if code_path else ""
            raise FaustStepError(f"{where}.app: cannot import {module_name}{hint}: {err}") from err
    app = getattr(module, attribute, None)
    if not isinstance(app, faust.App):
        raise FaustStepError(f"{where}.app: {spec.app} is not a faust.App")
    agent = _the_agent(app, spec.agent, where)
    channel = agent.channel
    if not isinstance(channel, faust.Topic) or len(channel.topics) != 1:
        raise FaustStepError(
            f"{where}.agent: {spec.agent} must consume one topic (app.topic(name))"
        )
    # The agent reads the step's input, whatever the code calls it.
    channel.topics = [step.from_]
    _check_tables(app, pipeline, step, where)
    changelogs = {faust_changelog_topic(pipeline.name, step.name, t) for t in spec.tables}
    outputs = frozenset(renames.values())
    for topic in created:
        for name in topic.topics:
            if topic is not channel and name not in outputs and name not in changelogs:
                raise FaustStepError(
                    f"{where}.outputs: the app uses topic '{name}', which is neither the agent's "
                    "input nor mapped to a Pipeline topic here"
                )
    return BoundApp(app, agent, step.from_, outputs)


def _the_agent(app: faust.App, wanted: str, where: str) -> AgentT:
    agents = dict(app.agents)
    matches = [name for name in agents if name == wanted or name.rsplit(".", 1)[-1] == wanted]
    if len(matches) != 1:
        found = ", ".join(sorted(agents)) or "none"
        why = "matches several" if matches else "is not an agent of the app"
        raise FaustStepError(f"{where}.agent: '{wanted}' {why} (the app's agents: {found})")
    # Only this step's agent runs here; the app's others would consume topics this step
    # does not own (each is a step of its own).
    for name in agents:
        if name != matches[0]:
            del app.agents[name]
    return agents[matches[0]]


def _check_tables(app: faust.App, pipeline: Pipeline, step: StepSpec, where: str) -> None:
    assert step.faust is not None
    declared = set(step.faust.tables)
    used = set(app.tables)
    if used - declared:
        raise FaustStepError(
            f"{where}.tables: the app keeps Table(s) {', '.join(sorted(used - declared))}; list "
            "them here so their changelog topics are created"
        )
    if declared - used:
        raise FaustStepError(
            f"{where}.tables: {', '.join(sorted(declared - used))} is not a Table of the app "
            f"(its Tables: {', '.join(sorted(used)) or 'none'})"
        )


@contextmanager
def _configured_apps(
    app_id: str, settings: dict[str, Any], renames: dict[str, str], created: list[TopicT]
) -> Iterator[None]:
    """While the user's module is imported: every faust.App gets `app_id` and
    `settings`; App.topic renames the code's names and records what it created. The topic
    hook stays after the import (an agent may create topics as it runs); the process is
    this step's alone."""
    original_init: Callable[..., None] = faust.App.__init__
    original_topic: Callable[..., TopicT] = faust.App.topic

    def init(self: faust.App, id: str, **options: Any) -> None:
        original_init(self, app_id, **{**options, **settings})

    def topic(self: faust.App, *topics: str, **options: Any) -> TopicT:
        made = original_topic(self, *(renames.get(name, name) for name in topics), **options)
        created.append(made)
        return made

    faust.App.__init__ = init  # type: ignore[method-assign]
    faust.App.topic = topic  # type: ignore[method-assign]
    try:
        yield
    finally:
        faust.App.__init__ = original_init  # type: ignore[method-assign]
