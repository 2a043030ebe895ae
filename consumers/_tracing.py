"""OpenTelemetry around handling, when the application configured it: a consumer span per handled record.

Only the API is used (``producers._tracing.tracer_or_none`` decides, when a runner starts, whether a
provider is configured); off, the runner holds ``None`` and its per-record path is unchanged.

On, each record is handled inside a ``CONSUMER`` span ``process <topic>`` whose parent is the trace
context in the record's headers (the producer span of ``publish``, or whatever span was current when the
record was prepared, such as an outbox write), so a flow is one trace. The span carries the messaging
semantic conventions' attributes (``messaging.system=kafka``, destination, partition, offset, key, consumer
group, ``messaging.operation.type=process``). Follow-ups the handler publishes are its children (the span is
current while the handler runs); in-place retries, moves to a retry tier and dead letters are span events
(``eventbus.retry``, ``eventbus.retry_tier``, ``eventbus.dead_letter``) with the error's type and message.

Example: ``tracing = ProcessTracing.create("t1.credits", "credits")``
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from producers import tracer_or_none

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from schemas import Event

    from ._transport import ConsumedRecord

__all__ = ["ProcessTracing"]

_Headers = Sequence[tuple[str, bytes]]
_SYSTEM = "kafka"


class _HeaderGetter:
    """Reads a propagator's fields from Kafka record headers (the ``Getter`` protocol of the API)."""

    def get(self, carrier: _Headers, key: str) -> list[str] | None:
        found = [value.decode("latin-1") for name, value in carrier if name == key]
        return found or None

    def keys(self, carrier: _Headers) -> list[str]:
        return [name for name, _ in carrier]


_GETTER = _HeaderGetter()


def _error_attributes(error: BaseException) -> dict[str, Any]:
    return {"exception.type": type(error).__qualname__, "exception.message": str(error) or type(error).__name__}


class ProcessTracing:
    """A group runner's tracer: process spans and their events (only built when tracing is on)."""

    __slots__ = ("_base", "_propagate", "_trace", "_tracer")

    def __init__(self, tracer: Tracer, group_id: str, group: str) -> None:
        from opentelemetry import propagate, trace  # noqa: PLC0415 - importable: the tracer came from it

        self._tracer = tracer
        self._trace = trace
        self._propagate = propagate
        self._base: dict[str, Any] = {
            "messaging.system": _SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.consumer.group.name": group_id,
            "eventbus.group": group,
        }

    @classmethod
    def create(cls, group_id: str, group: str, name: str = "eventbus.consumers") -> ProcessTracing | None:
        """The runner's tracing, or None when OpenTelemetry is not configured.

        ``group_id`` is the Kafka group id (``messaging.consumer.group.name``), ``group`` the group's name.
        """
        tracer = tracer_or_none(name)
        return None if tracer is None else cls(tracer, group_id, group)

    @contextmanager
    def processing(self, record: ConsumedRecord) -> Iterator[Span]:
        """The current span while ``record`` is handled: ``process <topic>``, parented by its headers' context."""
        parent = self._propagate.extract(record.headers, getter=_GETTER)  # type: ignore[arg-type]
        attributes = {
            **self._base,
            "messaging.destination.name": record.topic,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
            "messaging.message.body.size": len(record.value or b""),
        }
        if record.key is not None:
            attributes["messaging.kafka.message.key"] = record.key.decode("utf-8", "replace")
        with self._tracer.start_as_current_span(
            f"process {record.topic}", context=parent, kind=self._trace.SpanKind.CONSUMER, attributes=attributes
        ) as span:
            yield span

    def decoded(self, event: Event) -> None:
        """The event's type, id and correlation on the current span."""
        span = self._trace.get_current_span()
        if span.is_recording():
            meta = event.metadata
            span.set_attributes(
                {
                    "messaging.message.id": str(meta.event_id),
                    "messaging.message.conversation_id": meta.correlation_id or str(meta.event_id),
                    "eventbus.event_type": event.event_type,
                }
            )

    def retry(self, error: BaseException, attempt: int, delay_s: float) -> None:
        """Attempt ``attempt`` failed with ``error``; the handler runs again after ``delay_s``."""
        self._trace.get_current_span().add_event(
            "eventbus.retry", {**_error_attributes(error), "eventbus.attempt": attempt, "eventbus.delay_s": delay_s}
        )

    def retry_tier(self, error: BaseException, attempts: int, topic: str) -> None:
        """The record failed ``attempts`` times and goes to the retry topic ``topic``."""
        self._trace.get_current_span().add_event(
            "eventbus.retry_tier",
            {**_error_attributes(error), "eventbus.attempts": attempts, "eventbus.retry_topic": topic},
        )

    def dead_letter(self, error: BaseException, attempts: int, reason: str) -> None:
        """The record is dead-lettered (``reason``: ``failed`` or ``undecodable``); the span fails with ``error``."""
        span = self._trace.get_current_span()
        span.add_event(
            "eventbus.dead_letter",
            {**_error_attributes(error), "eventbus.attempts": attempts, "eventbus.reason": reason},
        )
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, str(error) or type(error).__name__))
