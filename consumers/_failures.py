"""Where a failed record goes: a delayed retry topic (non-blocking tier) or the dead-letter topic.

A record is done only once the broker acknowledged its copy in the retry topic
or its dead letter (invariant 2); until then the partition does not advance.

Retry tiers give up partition order for the record they take out of line: the
records after it go on while it waits. ``RuntimeConfig.retry_keep_key_order``
parks the later records of the same key behind it instead (within one process:
the parking is forgotten on restart or rebalance).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from producers import EventPublisher, OutgoingRecord
from schemas import Event
from schemas.errors import EventBusError

from ._dead_letter import build_dead_letter
from ._metrics import RuntimeMetrics
from ._transport import ConsumedRecord, PlainRecord

__all__ = ["RETRY_HEADER_PREFIX", "FailureRouter", "ParkedKeys", "RetryState", "retry_topic_name"]

log = logging.getLogger("eventbus.consumer")

RETRY_HEADER_PREFIX = "eventbus-retry-"
"""Headers the runtime adds to a record in a retry topic (stripped again from its dead letter)."""


def retry_topic_name(group: str, tier: int) -> str:
    """The retry topic of ``group``'s tier ``tier`` (1-based), before the topic prefix."""
    return f"retry.{group}.{tier}"


@dataclass(frozen=True, slots=True)
class RetryState:
    """What a record in a retry topic carries about its history."""

    tier: int
    due_ms: int
    origin: tuple[str, int, int]
    first_failure_ms: int
    attempts: int

    @classmethod
    def of(cls, record: ConsumedRecord) -> RetryState | None:
        """The state in ``record``'s headers, or None for a record that was never retried."""
        found = {
            k[len(RETRY_HEADER_PREFIX) :]: v.decode() for k, v in record.headers if k.startswith(RETRY_HEADER_PREFIX)
        }
        if "tier" not in found:
            return None
        topic, partition, offset = found["origin"].rsplit("/", 2)
        return cls(
            tier=int(found["tier"]),
            due_ms=int(found["due-ms"]),
            origin=(topic, int(partition), int(offset)),
            first_failure_ms=int(found["first-failure-ms"]),
            attempts=int(found["attempts"]),
        )

    def headers(self) -> list[tuple[str, bytes]]:
        """The headers that carry this state."""
        values = {
            "tier": str(self.tier),
            "due-ms": str(self.due_ms),
            "origin": "/".join(map(str, self.origin)),
            "first-failure-ms": str(self.first_failure_ms),
            "attempts": str(self.attempts),
        }
        return [(RETRY_HEADER_PREFIX + name, value.encode()) for name, value in values.items()]


def original_headers(record: ConsumedRecord) -> list[tuple[str, bytes]]:
    """``record``'s headers without the runtime's retry headers."""
    return [(k, v) for k, v in record.headers if not k.startswith(RETRY_HEADER_PREFIX)]


class ParkedKeys:
    """Keys with a record in the retry tiers, and that record's origin (the head) and tier."""

    def __init__(self) -> None:
        self._waiting: dict[bytes | None, deque[str]] = {}
        self._head_tier: dict[bytes | None, int] = {}

    def tier_to_join(self, key: bytes | None, origin: str) -> int | None:
        """The tier a record must follow its key's head into, or None when it may run now."""
        queue = self._waiting.get(key)
        if not queue or queue[0] == origin:
            return None
        return self._head_tier[key]

    def park(self, key: bytes | None, origin: str, tier: int) -> None:
        """``origin`` now waits in ``tier``."""
        queue = self._waiting.setdefault(key, deque())
        if origin not in queue:
            queue.append(origin)
        if queue[0] == origin:
            self._head_tier[key] = tier

    def release(self, key: bytes | None, origin: str) -> None:
        """``origin`` is done (handled or dead-lettered); the next record of the key becomes the head."""
        queue = self._waiting.get(key)
        if not queue or origin not in queue:
            return
        queue.remove(origin)
        if not queue:
            del self._waiting[key]
            self._head_tier.pop(key, None)


class FailureRouter:
    """Publishes retry copies and dead letters until the broker acknowledges them."""

    def __init__(
        self,
        *,
        group: str,
        publisher: EventPublisher,
        metrics: RuntimeMetrics,
        retry_topics: Sequence[str],
        retry_delays_s: Sequence[float],
        pause: Callable[[float], Awaitable[bool]],
        retry_pause_s: float,
    ) -> None:
        self.group = group
        self._publisher = publisher
        self._metrics = metrics
        self.retry_topics = list(retry_topics)
        self._delays = list(retry_delays_s)
        self._pause = pause
        self._retry_pause_s = retry_pause_s
        self._system_topic = publisher.connection.topic("system")

    def next_tier(self, state: RetryState | None) -> int | None:
        """The 1-based tier a retriable failure goes to next, or None when the tiers are used up."""
        tier = 1 if state is None else state.tier + 1
        return tier if tier <= len(self.retry_topics) else None

    async def to_tier(
        self, record: ConsumedRecord, tier: int, *, state: RetryState | None, attempts: int, first_failure: datetime
    ) -> bool:
        """Copy ``record`` to retry tier ``tier``, due after that tier's delay."""
        origin = state.origin if state else (record.topic, record.partition, record.offset)
        first_ms = state.first_failure_ms if state else int(first_failure.timestamp() * 1000)
        due_ms = int(time.time() * 1000 + self._delays[tier - 1] * 1000)
        new_state = RetryState(tier, due_ms, origin, first_ms, attempts)
        copy = OutgoingRecord(
            self.retry_topics[tier - 1], record.key, record.value or b"", original_headers(record) + new_state.headers()
        )
        return await self._until_acked(lambda: self._publisher.publish_record(copy), record, "retry copy")

    async def dead_letter(
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
        done = await self._until_acked(lambda: self._publisher.publish(letter), record, "dead letter")
        if done:
            self._metrics.dead_lettered.labels(self.group, reason).inc()
        return done

    async def _until_acked(self, publish: Callable[[], Awaitable[object]], record: ConsumedRecord, what: str) -> bool:
        while True:
            try:
                await publish()
            except EventBusError as exc:
                log.error(  # noqa: TRY400 - the traceback adds nothing; the partition's progress stops here
                    "%s NOT ACKNOWLEDGED; partition %s:%s stalls until it is: %s",
                    what.upper(),
                    record.topic,
                    record.partition,
                    exc,
                    extra={"group": self.group, "offset": record.offset},
                )
                if not await self._pause(self._retry_pause_s):
                    return False
            else:
                return True
