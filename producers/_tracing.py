"""OpenTelemetry around publishing, when the application configured it: producer spans, trace context in headers.

The libraries (``producers``, ``consumers``) only use the OpenTelemetry API and never configure it: the
application does (the ``eventbus`` commands call ``infra._telemetry.configure_telemetry``, driven by the
``OTEL_*`` variables), or any program that sets a ``TracerProvider`` of its own. Whether a publisher traces
is decided when it is built and again when it starts (``tracer_or_none``): on when the API is importable
and a real ``TracerProvider`` is set (not the API's default proxy, nor the SDK's no-op tracer under
``OTEL_SDK_DISABLED=true``). Off, the publisher holds ``None`` and pays one attribute check per event.

On, every ``publish`` (and ``send``; one span per ``publish_many`` call) runs in a ``PRODUCER`` span named
``publish <topic>``, a child of the caller's current span, with the messaging semantic conventions'
attributes (``messaging.system=kafka``, destination, partition, offset, key, message id); the span's W3C
trace context (``traceparent``, ``tracestate``) goes into the record's headers, so consumers continue the
trace. Example: ``tracing = PublishTracing.create("eventbus.producers")``
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from schemas import Event

    from ._transport import DoneCallback, OutgoingRecord

__all__ = ["MESSAGING_SYSTEM", "PublishTracing", "tracer_or_none"]

MESSAGING_SYSTEM = "kafka"
"""``messaging.system`` of every span."""


def tracer_or_none(name: str) -> Tracer | None:
    """The tracer ``name`` when an OpenTelemetry ``TracerProvider`` is configured, else None.

    None when the API is not installed, when no provider was set (the API's proxy), and when the
    provider hands out no-op tracers (the SDK's under ``OTEL_SDK_DISABLED=true``).
    Example: ``tracer_or_none("eventbus.producers")``
    """
    try:
        from opentelemetry import trace  # noqa: PLC0415 - optional: only the API, only when asked
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    tracer = provider.get_tracer(name)
    if isinstance(tracer, (trace.NoOpTracer, trace.ProxyTracer)):
        return None
    return tracer


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode("utf-8", "replace")


class PublishTracing:
    """The publisher's tracer: producer spans and trace-context injection (only built when tracing is on)."""

    __slots__ = ("_propagate", "_trace", "_tracer")

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry import propagate, trace  # noqa: PLC0415 - importable: the tracer came from it

        self._tracer = tracer
        self._trace = trace
        self._propagate = propagate

    @classmethod
    def create(cls, name: str = "eventbus.producers") -> PublishTracing | None:
        """The publisher's tracing, or None when OpenTelemetry is not configured (see ``tracer_or_none``)."""
        tracer = tracer_or_none(name)
        return None if tracer is None else cls(tracer)

    def inject(self, headers: list[tuple[str, bytes]]) -> None:
        """Add the current context's ``traceparent`` (and ``tracestate``, baggage) to ``headers``."""
        carrier: dict[str, str] = {}
        self._propagate.inject(carrier)
        headers.extend((name, value.encode()) for name, value in carrier.items())

    def start(self, topic: str, *, count: int | None = None) -> Span:
        """A ``PRODUCER`` span ``publish <topic>``, child of the current span (not made current)."""
        attributes: dict[str, Any] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.type": "publish",
            "messaging.operation.name": "publish",
            "messaging.destination.name": topic,
        }
        if count is not None:
            attributes["messaging.batch.message_count"] = count
        return self._tracer.start_span(f"publish {topic}", kind=self._trace.SpanKind.PRODUCER, attributes=attributes)

    @contextmanager
    def current(self, span: Span, *, end: bool = True) -> Iterator[Span]:
        """``span`` as the current span inside; an error leaving the block is recorded on it (and ends it)."""
        try:
            with self._trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                yield span
        except BaseException as exc:
            self.fail(span, exc)
            span.end()
            raise
        if end:
            span.end()

    def prepared(self, span: Span, record: OutgoingRecord, event: Event) -> None:
        """What is known once the record is built: key, message id, size, correlation, event type."""
        if not span.is_recording():
            return
        meta = event.metadata
        span.set_attributes(
            {
                "messaging.destination.name": record.topic,
                "messaging.kafka.message.key": _text(record.key),
                "messaging.message.id": str(meta.event_id),
                "messaging.message.body.size": len(record.value),
                "messaging.message.conversation_id": meta.correlation_id or str(meta.event_id),
                "eventbus.event_type": event.event_type,
            }
        )

    def delivered(self, span: Span, partition: int, offset: int) -> None:
        """The broker's acknowledgement: partition and offset."""
        span.set_attribute("messaging.destination.partition.id", str(partition))
        span.set_attribute("messaging.kafka.offset", offset)

    def fail(self, span: Span, error: BaseException) -> None:
        """Mark ``span`` failed with ``error`` (``error.type``, an exception event, status ERROR)."""
        span.set_attribute("error.type", type(error).__qualname__)
        span.record_exception(error)
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, str(error) or type(error).__name__))

    def on_sent(self, span: Span, done: DoneCallback) -> DoneCallback:
        """``done`` wrapped to end ``span`` first (failed, when the send failed): for ``send()``'s callback."""

        def sent(token: object, error: BaseException | None) -> None:
            if error is not None:
                self.fail(span, error)
            span.end()
            done(token, error)

        return sent
