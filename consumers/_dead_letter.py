"""Turning a record the group could not handle into a ``system:error`` dead letter."""

from __future__ import annotations

import traceback
from datetime import datetime

from schemas import Event, RecordHeader, SystemErrorEvent

from ._transport import ConsumedRecord

__all__ = ["REPLAY_HEADER", "build_dead_letter"]

REPLAY_HEADER = "eventbus-replayed-from"
"""Header added to a replayed record: ``<system topic>/<partition>/<offset>`` of its dead letter."""

_MAX_TRACEBACK = 16_000


def build_dead_letter(
    *,
    group: str,
    record: ConsumedRecord,
    error: BaseException,
    attempts: int,
    first_failure_at: datetime,
    last_failure_at: datetime,
    event: Event | None,
) -> SystemErrorEvent:
    """The dead letter of ``record``: its bytes, key and headers untouched, and why it failed.

    Example: ``build_dead_letter(group="credits", record=r, error=exc, attempts=3, ...)``
    """
    trace = "".join(traceback.format_exception(error))
    metadata: dict[str, object] = {}
    if event is not None:
        metadata["correlation_id"] = event.metadata.correlation_id or str(event.metadata.event_id)
        metadata["causation_id"] = event.metadata.event_id
    return SystemErrorEvent.model_validate(
        {
            **({"metadata": metadata} if metadata else {}),
            "consumer_group": group,
            "original_topic": record.topic,
            "original_partition": record.partition,
            "original_offset": record.offset,
            "original_key": record.key,
            "original_headers": [RecordHeader(key=k, value=v) for k, v in record.headers],
            "original_value": record.value or b"",
            "original_event_type": event.event_type if event is not None else None,
            "original_event_id": event.event_id if event is not None else None,
            "error_type": type(error).__name__,
            "error_message": str(error) or type(error).__name__,
            "error_traceback": trace[-_MAX_TRACEBACK:],
            "attempts": attempts,
            "first_failure_at": first_failure_at,
            "last_failure_at": last_failure_at,
        }
    )
