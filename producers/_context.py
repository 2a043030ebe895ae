"""Correlation and causation carried by the caller's context (contextvars)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from uuid import UUID, uuid4

from schemas import Event

__all__ = [
    "CauseToken",
    "caused_by",
    "correlation_scope",
    "current_causation_id",
    "current_correlation_id",
    "reset_cause",
    "set_cause",
]

# An Event here means "the correlation of this event", worked out only when something is published.
_correlation: ContextVar[str | Event | None] = ContextVar("eventbus_correlation", default=None)
_cause: ContextVar[Event | None] = ContextVar("eventbus_cause", default=None)

CauseToken = tuple[Token[str | Event | None], Token[Event | None]]


def current_correlation_id() -> str | None:
    """The correlation id of the current context, if any."""
    value = _correlation.get()
    if isinstance(value, Event):
        return value.metadata.correlation_id or str(value.metadata.event_id)
    return value


def current_causation_id() -> UUID | None:
    """The causing event id of the current context, if any."""
    cause = _cause.get()
    return None if cause is None else cause.metadata.event_id


@contextmanager
def correlation_scope(correlation_id: str | None = None) -> Iterator[str]:
    """Every event published inside gets this correlation id (a new one when omitted).

    Example::

        with correlation_scope(request_id):
            await publisher.publish(event)
    """
    value = correlation_id or str(uuid4())
    token = _correlation.set(value)
    try:
        yield value
    finally:
        _correlation.reset(token)


def set_cause(source: Event) -> CauseToken:
    """Make ``source`` the cause of what is published in this context until ``reset_cause``.

    The allocation-free form of ``caused_by`` for hot paths (the consumer runtime).
    """
    return _correlation.set(source), _cause.set(source)


def reset_cause(token: CauseToken) -> None:
    """Undo ``set_cause``."""
    _cause.reset(token[1])
    _correlation.reset(token[0])


@contextmanager
def caused_by(source: Event) -> Iterator[None]:
    """Events published inside are follow-ups of ``source``.

    They get ``causation_id = source.event_id`` and inherit its correlation id
    (or use its event id when it had none).
    Example: ``with caused_by(event): await publisher.publish(follow_up)``
    """
    token = set_cause(source)
    try:
        yield
    finally:
        reset_cause(token)
