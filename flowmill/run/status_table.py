"""The live status of a local run, as a rich table (terminals) or one log line (pipes,
CI logs), both drawn from the same RunStatus snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class RowStatus:
    """One child's line in the table."""

    label: str
    kind: str
    state: str
    """starting, ready, done, restarting, exited or stopped."""
    pid: int | None = None
    restarts: int = 0
    rate_in: float | None = None
    rate_out: float | None = None
    events_in: float | None = None
    events_out: float | None = None
    lag: float | None = None
    dead: float | None = None
    detail: str = ""
    """What its /readyz said."""
    log_path: str = ""


@dataclass(frozen=True)
class RunStatus:
    """Everything the table shows at one moment."""

    pipeline: str
    bootstrap_servers: str
    redis_url: str
    api_url: str | None
    dashboard_url: str | None
    docs_url: str | None
    log_dir: str
    rows: list[RowStatus] = field(default_factory=list)
    health_url: str | None = None
    """The dashboard's health view (the graph of sources, topics, steps and sinks)."""
    extras: list[str] = field(default_factory=list)
    """Other things the run serves, e.g. a local GBFS feed."""

    @property
    def all_ready(self) -> bool:
        return bool(self.rows) and all(r.state in ("ready", "done") for r in self.rows)


_STATE_STYLE = {
    "ready": "green",
    "done": "cyan",
    "starting": "yellow",
    "restarting": "red",
    "exited": "red",
    "stopped": "dim",
}


def _num(value: float | None, rate: bool = False) -> str:
    if value is None:
        return "-"
    if rate:
        return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,.0f}"


def render(status: RunStatus) -> RenderableType:
    """The table a terminal shows, refreshed every second."""
    table = Table(
        title=f"flowmill run · Pipeline [bold]{status.pipeline}[/bold]",
        title_justify="left",
        expand=False,
    )
    table.add_column("component")
    table.add_column("state")
    table.add_column("in/s", justify="right")
    table.add_column("out/s", justify="right")
    table.add_column("in", justify="right")
    table.add_column("out", justify="right")
    table.add_column("lag", justify="right")
    table.add_column("dead-lettered", justify="right")
    table.add_column("restarts", justify="right")
    for row in status.rows:
        state = Text(row.state, style=_STATE_STYLE.get(row.state, ""))
        # A source consumes nothing (its "dead-lettered" is input it could not read).
        consumes = row.kind != "source"
        table.add_row(
            row.label,
            state,
            _num(row.rate_in if consumes else None, rate=True),
            _num(row.rate_out, rate=True),
            _num(row.events_in if consumes else None),
            _num(row.events_out),
            _num(row.lag if consumes else None),
            _num(row.dead),
            str(row.restarts) if row.restarts else "",
        )
    lines = [
        f"Kafka {status.bootstrap_servers}   Redis {status.redis_url}",
    ]
    if status.api_url:
        lines.append(f"API        {status.api_url}   (OpenAPI docs: {status.docs_url})")
    if status.dashboard_url:
        lines.append(f"Dashboard  {status.dashboard_url}")
    if status.health_url:
        lines.append(f"Health     {status.health_url}")
    lines += status.extras
    lines.append(f"Logs       {status.log_dir}   ·   Ctrl-C stops everything")
    return Group(table, Text("\n".join(lines)))


def plain(status: RunStatus) -> str:
    """One line for logs: each component's state, rates, lag and dead letters."""
    parts = []
    for row in status.rows:
        if row.kind == "api":
            parts.append(f"api {row.state}")
            continue
        text = f"{row.label} {row.state}"
        if row.kind == "step":
            text += f" in {_num(row.rate_in, True)}/s ({_num(row.events_in)})"
            text += f" lag {_num(row.lag)} dead {_num(row.dead)}"
        else:
            text += f" out {_num(row.rate_out, True)}/s ({_num(row.events_out)})"
        if row.restarts:
            text += f" restarts {row.restarts}"
        parts.append(text)
    return f"[{status.pipeline}] " + " | ".join(parts)
