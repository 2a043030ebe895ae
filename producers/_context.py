"""Correlation and causation carried by the caller's context (contextvars)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from uuid import UUID, uuid4

from schemas import Event

__all__ = ["caused_by", "correlation_scope", "current_causation_id", "current_correlation_id"]

_correlation_id: ContextVar[str | None] = ContextVar("eventbus_correlation_id", default=None)
_causation_id: ContextVar[UUID | None] = ContextVar("eventbus_causation_id", default=None)


def current_correlation_id() -> str | None:
    """The correlation id of the current context, if any."""
    return _correlation_id.get()


def current_causation_id() -> UUID | None:
    """The causing event id of the current context, if any."""
    return _causation_id.get()


@contextmanager
def correlation_scope(correlation_id: str | None = None) -> Iterator[str]:
    """Every event published inside gets this correlation id (a new one when omitted).

    Example::

        with correlation_scope(request_id):
            await publisher.publish(event)
    """
    value = correlation_id or str(uuid4())
    token = _correlation_id.set(value)
    try:
        yield value
    finally:
        _correlation_id.reset(token)


@contextmanager
def caused_by(source: Event) -> Iterator[None]:
    """Events published inside are follow-ups of ``source``.

    They get ``causation_id = source.event_id`` and inherit its correlation id
    (or use its event id when it had none).
    Example: ``with caused_by(event): await publisher.publish(follow_up)``
    """
    correlation = source.metadata.correlation_id or str(source.metadata.event_id)
    tokens = (_correlation_id.set(correlation), _causation_id.set(source.metadata.event_id))
    try:
        yield
    finally:
        _causation_id.reset(tokens[1])
        _correlation_id.reset(tokens[0])
