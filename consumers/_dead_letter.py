"""Dead letters: a record the group could not handle, built into a ``system:error`` event and published.

The dead letter keeps the record's bytes, key and headers untouched (of its original, when it
comes from a retry tier) and says why it failed; it is published to the system topic until the
broker acknowledges it (invariant 2), and only then is the record done.
"""

from __future__ import annotations

import logging
import traceback
from datetime import UTC, datetime

from producers import EventPublisher
from schemas import Event, RecordHeader, SystemErrorEvent

from ._acked import UntilAcked
from ._metrics import RuntimeMetrics
from ._retry_tiers import RetryState, original_headers
from ._transport import ConsumedRecord, PlainRecord

__all__ = ["REPLAY_HEADER", "DeadLetterPublisher", "build_dead_letter"]

log = logging.getLogger("eventbus.consumer")

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


class DeadLetterPublisher:
    """Publishes the group's dead letters to the system topic until the broker acknowledges them.

    Example: ``await DeadLetterPublisher(group="credits", publisher=p, metrics=m, acked=a).publish(record, exc, ...)``
    """

    def __init__(self, *, group: str, publisher: EventPublisher, metrics: RuntimeMetrics, acked: UntilAcked) -> None:
        self.group = group
        self._publisher = publisher
        self._metrics = metrics
        self._acked = acked
        self._system_topic = publisher.connection.topic("system")

    async def publish(
        self,
        record: ConsumedRecord,
        error: BaseException,
        *,
        state: RetryState | None,
        attempts: int,
        first_failure: datetime,
        last_failure: datetime,
        event: Event | None,
        reason: str,
    ) -> bool:
        """Publish the dead letter of ``record`` (of its original, when it came from a retry tier)."""
        if record.topic == self._system_topic:
            # A dead letter that fails again is not dead-lettered twice (that could loop); it stays where it is.
            log.error("handler failed on a dead letter; skipping it", extra={"group": self.group, "error": repr(error)})
            return True
        source: ConsumedRecord = record
        if state is not None:
            topic, partition, offset = state.origin
            headers = original_headers(record)
            source = PlainRecord(topic, partition, offset, record.timestamp, record.key, record.value, headers)
            first_failure = datetime.fromtimestamp(state.first_failure_ms / 1000, UTC)
        letter = build_dead_letter(
            group=self.group,
            record=source,
            error=error,
            attempts=attempts,
            first_failure_at=first_failure,
            last_failure_at=last_failure,
            event=event,
        )
        log.warning(
            "dead-lettering record: %s: %s",
            type(error).__name__,
            error,
            extra={
                "group": self.group,
                "topic": source.topic,
                "partition": source.partition,
                "offset": source.offset,
                "event_type": event.event_type if event else None,
                "event_id": str(event.event_id) if event else None,
            },
        )
        done = await self._acked(lambda: self._publisher.publish(letter), record, "dead letter")
        if done:
            self._metrics.dead_lettered.labels(self.group, reason).inc()
        return done
