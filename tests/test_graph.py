"""The Pipeline graph the health view draws (flowmill.spec.graph) and its SVG: for the
trips example (a join, a Kafka sink feeding two more steps, a shared dead-letter topic),
nodes, edges and columns as read off the manifest by hand."""

from __future__ import annotations

from xml.etree import ElementTree

from flowmill.manifest import load_pipeline, parse_pipeline
from flowmill.spec.graph import dead_letter_topics, pipeline_graph
from flowmill_api.health_svg import graph_svg
from tests.examples.harness import EXAMPLES

SVG = "{http://www.w3.org/2000/svg}"


def test_trips_graph_and_its_drawing() -> None:
    pipeline = load_pipeline(EXAMPLES / "trips.yaml")
    graph = pipeline_graph(pipeline)
    columns = {n.id: n.column for n in graph.nodes}
    assert columns == {
        "source/trip-start": 0,
        "source/trip-end": 0,
        "topic/trip-start": 1,
        "topic/trip-end": 1,
        "topic/trips-completed": 3,
        "topic/trips-dlq": 5,  # after daily-kpis, which dead-letters there too
        "step/complete": 2,
        "step/trip-records": 4,
        "step/daily-kpis": 4,
        "sink/trip-records/redis": 5,
        "sink/daily-kpis/redis": 5,
    }
    edges = {(e.source, e.target, e.kind) for e in graph.edges}
    assert edges == {
        ("source/trip-start", "topic/trip-start", "data"),
        ("source/trip-end", "topic/trip-end", "data"),
        ("topic/trip-end", "step/complete", "data"),
        ("topic/trip-start", "step/complete", "join"),
        ("step/complete", "topic/trips-dlq", "deadLetter"),
        ("step/complete", "topic/trips-completed", "data"),
        ("topic/trips-completed", "step/trip-records", "data"),
        ("topic/trips-completed", "step/daily-kpis", "data"),
        ("step/daily-kpis", "topic/trips-dlq", "deadLetter"),
        ("step/trip-records", "sink/trip-records/redis", "data"),
        ("step/daily-kpis", "sink/daily-kpis/redis", "data"),
    }
    assert len(graph.edges) == len(edges)  # no edge twice
    assert dead_letter_topics(pipeline) == ["trips-dlq"]
    assert graph.node("topic/trips-dlq").detail == "dead letters"
    assert graph.node("sink/daily-kpis/redis").name == "daily_kpis"
    # Rows count up within a column, so no two nodes share a place.
    places = [(n.column, n.row) for n in graph.nodes]
    assert len(set(places)) == len(places)
    for edge in graph.edges:  # every edge points right
        assert columns[edge.target] > columns[edge.source]

    svg = ElementTree.fromstring(graph_svg(graph, "Pipeline trips"))
    drawn = {g.get("data-node") for g in svg.iter(f"{SVG}g")}
    assert drawn == set(columns)
    paths = {(p.get("data-source"), p.get("data-target")) for p in svg.iter(f"{SVG}path")}
    assert {(s, t) for s, t, _ in edges} <= paths


def test_lookup_edges_come_from_the_reference() -> None:
    """citibike's region-minute looks stations up in the `stations` table: the edge comes
    from the sink of the step that keeps it, so the step is drawn after that table; a
    lookup of a reference topic gets its edge from the topic."""
    pipeline = load_pipeline(EXAMPLES / "citibike.yaml")
    graph = pipeline_graph(pipeline)
    lookups = {(e.source, e.target) for e in graph.edges if e.kind == "lookup"}
    assert lookups == {("sink/stations/redis", "step/region-minute")}
    columns = {n.id: n.column for n in graph.nodes}
    assert columns["sink/stations/redis"] == 3  # source 0, topic 1, step stations 2
    assert columns["step/region-minute"] == 4
    assert columns["sink/region-minute/redis"] == 5

    doc = pipeline.model_dump(by_alias=True, exclude_none=True)
    step = next(s for s in doc["spec"]["steps"] if s["name"] == "region-minute")
    step["lookup"] = {**step["lookup"], "topic": "station-information"}
    del step["lookup"]["table"]
    graph = pipeline_graph(parse_pipeline(doc))
    lookups = {(e.source, e.target) for e in graph.edges if e.kind == "lookup"}
    assert lookups == {("topic/station-information", "step/region-minute")}
    svg = ElementTree.fromstring(graph_svg(graph, "Pipeline citibike"))
    drawn = {
        p.get("data-source")
        for p in svg.iter(f"{SVG}path")
        if "edge-lookup" in (p.get("class") or "")
    }
    assert drawn == {"topic/station-information"}
