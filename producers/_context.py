"""Correlation and causation carried by the caller's context (contextvars)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
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

# One variable for both, so the consumer runtime sets and resets a single one per record: an Event
# (inside a handler: the event being handled, whose correlation is worked out only when something is
# published) or a (correlation id, cause) pair set by ``correlation_scope``, which keeps the cause.
_Flow = Event | tuple[str, Event | None]
_flow: ContextVar[_Flow | None] = ContextVar("eventbus_flow", default=None)

CauseToken = Token[_Flow | None]


def current_correlation_id() -> str | None:
    """The correlation id of the current context, if any."""
    flow = _flow.get()
    if flow is None:
        return None
    if isinstance(flow, tuple):
        return flow[0]
    return flow.metadata.correlation_id or str(flow.metadata.event_id)


def current_causation_id() -> UUID | None:
    """The causing event id of the current context, if any."""
    flow = _flow.get()
    cause = flow[1] if isinstance(flow, tuple) else flow
    return None if cause is None else cause.metadata.event_id


@contextmanager
def correlation_scope(correlation_id: str | None = None) -> Iterator[str]:
    """Every event published inside gets this correlation id (a new one when omitted).

    Example::

        with correlation_scope(request_id):
            await publisher.publish(event)
    """
    value = correlation_id or str(uuid4())
    flow = _flow.get()
    token = _flow.set((value, flow[1] if isinstance(flow, tuple) else flow))
    try:
        yield value
    finally:
        _flow.reset(token)


# The context variable's own methods, not functions calling them: the consumer runtime calls both once
# per record, where a Python call each is a measurable share of its bookkeeping.
set_cause: Callable[[Event], CauseToken] = _flow.set
"""``set_cause(source)``: make ``source`` the cause of what is published in this context until ``reset_cause``.

The allocation-free form of ``caused_by`` for hot paths (the consumer runtime). Example:
``token = set_cause(event)`` ... ``reset_cause(token)``
"""
reset_cause: Callable[[CauseToken], None] = _flow.reset
"""``reset_cause(token)``: undo ``set_cause``."""


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
