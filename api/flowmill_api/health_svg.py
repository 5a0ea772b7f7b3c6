"""The health view's drawing: a Pipeline's graph as inline SVG, laid out from the spec
(flowmill.spec.graph's columns and rows), no script library. Each node is a <g> with
data-node set to its id and empty text lines that the page's script fills from
/pipelines/{name}/health; each edge a path with data-source and data-target."""

from __future__ import annotations

from html import escape

from flowmill.spec.graph import Edge, Graph, Node

NODE_W = 200
NODE_H = 92
COL_GAP = 70
ROW_GAP = 26
MARGIN = 12
LINES = 3
"""Text lines a node has for its numbers (the page fills them)."""
_KIND_LABEL = {"source": "source", "topic": "topic", "step": "step", "sink": "sink"}


def _x(node: Node) -> int:
    return MARGIN + node.column * (NODE_W + COL_GAP)


def _y(node: Node) -> int:
    return MARGIN + node.row * (NODE_H + ROW_GAP)


def _short(text: str, limit: int = 26) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _node(node: Node) -> str:
    kind = _KIND_LABEL[node.kind]
    label = f"{kind} · {node.detail}" if node.detail else kind
    classes = f"node node-{node.kind}" + (
        " node-dead-letters" if node.detail == "dead letters" else ""
    )
    lines = "".join(
        f'<text class="line" data-line="{i}" x="10" y="{44 + 16 * i}"></text>' for i in range(LINES)
    )
    return (
        f'<g class="{classes}" data-node="{escape(node.id)}" '
        f'transform="translate({_x(node)},{_y(node)})">'
        f"<title>{escape(node.id)}</title>"
        f'<rect class="box" width="{NODE_W}" height="{NODE_H}" rx="6"></rect>'
        f'<circle class="dot" cx="{NODE_W - 14}" cy="14" r="5"></circle>'
        f'<text class="kind" x="10" y="15">{escape(label)}</text>'
        f'<text class="name" x="10" y="30">{escape(_short(node.name))}</text>'
        f"{lines}</g>"
    )


def _edge(edge: Edge, graph: Graph) -> str:
    a, b = graph.node(edge.source), graph.node(edge.target)
    x1, y1 = _x(a) + NODE_W, _y(a) + NODE_H // 2
    x2, y2 = _x(b), _y(b) + NODE_H // 2
    bend = max(30, (x2 - x1) // 2)
    return (
        f'<path class="edge edge-{edge.kind}" data-source="{escape(edge.source)}" '
        f'data-target="{escape(edge.target)}" marker-end="url(#arrow)" '
        f'd="M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}"></path>'
    )


def graph_svg(graph: Graph, title: str) -> str:
    width = 2 * MARGIN + graph.columns * NODE_W + max(0, graph.columns - 1) * COL_GAP
    height = 2 * MARGIN + graph.rows * NODE_H + max(0, graph.rows - 1) * ROW_GAP
    edges = "".join(_edge(e, graph) for e in graph.edges)
    nodes = "".join(_node(n) for n in graph.nodes)
    return (
        f'<svg id="graph" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="{escape(title)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" '
        'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        '<path d="M0,0 L10,5 L0,10 z" class="arrow"></path></marker></defs>'
        f"{edges}{nodes}</svg>"
    )
