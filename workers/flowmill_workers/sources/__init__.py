"""flowmill workers: sources, one module per kind behind the interface in `base`.

The runner (runtime.source_runner) drives any of them the same way; `build_source` picks
the module from the spec.
"""

from __future__ import annotations

from flowmill_workers.sources.base import Chunk, Position, Source, SourceContext


def build_source(ctx: SourceContext) -> Source:
    """The source implementing `ctx.spec`'s kind."""
    spec = ctx.spec
    if spec.http_poll is not None:
        from flowmill_workers.sources.http_poll import HttpPoll

        return HttpPoll(ctx)
    if spec.file_replay is not None:
        from flowmill_workers.sources.file_replay import FileReplay

        return FileReplay(ctx)
    if spec.generator is not None:
        from flowmill_workers.sources.generator import Generator

        return Generator(ctx)
    if spec.kafka is not None:
        from flowmill_workers.sources.kafka_mirror import KafkaMirror

        return KafkaMirror(ctx)
    raise ValueError(f"source {spec.name} sets no kind")


__all__ = ["Chunk", "Position", "Source", "SourceContext", "build_source"]
