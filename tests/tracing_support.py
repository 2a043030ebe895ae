"""The test session's OpenTelemetry: one SDK provider with an in-memory exporter, switched on per test.

OpenTelemetry lets a process set the global ``TracerProvider`` once, so the session sets it once (on
first use) and keeps it. Outside ``traced()`` it hands out no-op tracers, which the libraries take for
"not configured" (``producers.tracer_or_none``): every other test runs with tracing off, as before.
Publishers and runners decide when they start, so start them inside the block.

Example::

    with traced() as spans:
        async with EventPublisher(transport=broker.producer()) as publisher:
            await publisher.publish(event)
    assert [s.name for s in spans.get_finished_spans()] == ["publish session"]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

__all__ = ["SwitchableTracerProvider", "by_name", "session_provider", "traced"]


class SwitchableTracerProvider(TracerProvider):
    """The SDK's provider, giving no-op tracers unless ``active``."""

    active = False

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> trace.Tracer:
        if not self.active:
            return trace.NoOpTracer()
        return super().get_tracer(instrumenting_module_name, instrumenting_library_version, schema_url, attributes)


_SESSION: list[tuple[SwitchableTracerProvider, InMemorySpanExporter]] = []


def session_provider() -> tuple[SwitchableTracerProvider, InMemorySpanExporter]:
    """The global provider and its exporter, set on the first call of the session."""
    if not _SESSION:
        exporter = InMemorySpanExporter()
        provider = SwitchableTracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        if trace.get_tracer_provider() is not provider:
            raise RuntimeError("another global TracerProvider was set before the tracing tests")
        _SESSION.append((provider, exporter))
    return _SESSION[0]


@contextmanager
def traced() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the block, into a cleared in-memory exporter."""
    provider, exporter = session_provider()
    exporter.clear()
    provider.active = True
    try:
        yield exporter
    finally:
        provider.active = False


def by_name(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    """The spans called ``name``, in the order they ended."""
    return [span for span in spans if span.name == name]
