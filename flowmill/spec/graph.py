"""A Pipeline as a graph: sources -> topics -> steps -> sinks, with the columns a drawing
puts each node in. The health view draws it (the API renders it as SVG) and fills each
node with what the run or the cluster reports; node ids are the names both sides use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from flowmill.spec.pipeline import Pipeline
from flowmill.spec.steps import StepSpec

NodeKind = Literal["source", "topic", "step", "sink"]
EdgeKind = Literal["data", "deadLetter", "join", "lookup"]


@dataclass(frozen=True)
class Node:
    id: str
    """`source/NAME`, `topic/NAME`, `step/NAME` or `sink/STEP/KIND`."""
    kind: NodeKind
    name: str
    """What the node is called in the manifest (a sink: its table, topic or lake)."""
    detail: str = ""
    """A sink's kind (redis, parquet); a dead-letter topic: `dead letters`."""
    column: int = 0
    """Left to right: how many edges the longest path from a source to it has."""
    row: int = 0
    """Top to bottom within its column, in manifest order."""


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: EdgeKind = "data"


@dataclass(frozen=True)
class Graph:
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)

    @property
    def columns(self) -> int:
        return 1 + max((n.column for n in self.nodes), default=-1)

    @property
    def rows(self) -> int:
        return 1 + max((n.row for n in self.nodes), default=-1)

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.id == node_id)


def source_id(name: str) -> str:
    return f"source/{name}"


def topic_id(name: str) -> str:
    return f"topic/{name}"


def step_id(name: str) -> str:
    return f"step/{name}"


def sink_id(step: str, kind: str) -> str:
    return f"sink/{step}/{kind}"


def dead_letter_topics(pipeline: Pipeline) -> list[str]:
    """Every topic some step dead-letters to, in manifest order."""
    out: list[str] = []
    for step in pipeline.spec.steps:
        for path, topic in step.outputs():
            if path[-1] == "deadLetter" and topic not in out:
                out.append(topic)
    return out


def _sinks(step: StepSpec) -> list[tuple[str, str]]:
    """(kind, name) of each sink that is not a topic (a Kafka sink is its topic's node)."""
    sink = step.sink
    if sink is None:
        return []
    out = []
    if sink.redis is not None:
        out.append(("redis", sink.redis.table))
    if sink.parquet is not None:
        s3 = sink.parquet.s3
        where = f"s3://{s3.bucket}/{s3.prefix}".rstrip("/") if s3 else (sink.parquet.path or "")
        out.append(("parquet", where))
    return out


def pipeline_graph(pipeline: Pipeline) -> Graph:
    """The graph of `pipeline`; the spec's validation has ruled out cycles."""
    spec = pipeline.spec
    dead = set(dead_letter_topics(pipeline))
    nodes: dict[str, tuple[NodeKind, str, str]] = {}
    edges: list[Edge] = []
    tables = {s.sink.redis.table: s.name for s in spec.steps if s.sink and s.sink.redis}
    for source in spec.sources:
        nodes[source_id(source.name)] = ("source", source.name, "")
    for topic in spec.topics:
        nodes[topic_id(topic.name)] = (
            "topic",
            topic.name,
            "dead letters" if topic.name in dead else "",
        )
    for source in spec.sources:
        edges.append(Edge(source_id(source.name), topic_id(source.to)))
    for step in spec.steps:
        sid = step_id(step.name)
        nodes[sid] = ("step", step.name, "faust" if step.faust is not None else "")
        edges.append(Edge(topic_id(step.from_), sid))
        if step.correlate is not None:
            edges.append(Edge(topic_id(step.correlate.with_), sid, "join"))
        if step.lookup is not None:
            # The reference a lookup reads: its topic, or the sink of the step that keeps
            # the latest-state table (the spec's validation has checked that one exists).
            reference = (
                topic_id(step.lookup.topic)
                if step.lookup.topic is not None
                else sink_id(tables[step.lookup.table or ""], "redis")
            )
            edges.append(Edge(reference, sid, "lookup"))
        for path, output in step.outputs():
            edge_kind: EdgeKind = "deadLetter" if path[-1] == "deadLetter" else "data"
            edges.append(Edge(sid, topic_id(output), edge_kind))
        for kind_name, name in _sinks(step):
            nodes[sink_id(step.name, kind_name)] = ("sink", name, kind_name)
            edges.append(Edge(sid, sink_id(step.name, kind_name)))
    edges = list(dict.fromkeys(edges))  # validate's and the step's dead-letter topic may be one
    columns = _columns(list(nodes), edges)
    rows: dict[int, int] = {}
    placed = []
    for node_id, (kind, name, detail) in nodes.items():
        column = columns[node_id]
        row = rows.get(column, 0)
        rows[column] = row + 1
        placed.append(Node(node_id, kind, name, detail, column, row))
    return Graph(placed, edges)


def _columns(node_ids: list[str], edges: list[Edge]) -> dict[str, int]:
    """Longest-path layering: every edge points to a later column."""
    incoming: dict[str, list[str]] = {n: [] for n in node_ids}
    for edge in edges:
        incoming[edge.target].append(edge.source)
    column: dict[str, int] = {}

    def depth(node: str, seen: frozenset[str]) -> int:
        if node in column:
            return column[node]
        if node in seen:  # not reached for a valid spec; never loop on an invalid one
            return 0
        parents = incoming[node]
        value = 1 + max((depth(p, seen | {node}) for p in parents), default=-1)
        column[node] = value
        return value

    for node in node_ids:
        depth(node, frozenset())
    return column
