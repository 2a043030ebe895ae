"""Non-blocking retry tiers: a retriable failure is copied to ``retry.<group>.<n>`` and handled again when due.

A record's history travels in its headers (``RetryState``). Retry tiers give up partition
order for the record they take out of line: the records after it go on while it waits.
``RuntimeConfig.retry_keep_key_order`` parks the later records of the same key behind it
instead (``ParkedKeys``, within one process: forgotten on restart or rebalance). The runner
waits for a tier record to be due without holding a handler slot.

Example: ``RetryTiers(group="credits", publisher=p, topics=["retry.credits.1"], delays_s=[5], acked=...)``
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from producers import EventPublisher, OutgoingRecord

from ._acked import UntilAcked
from ._transport import ConsumedRecord

__all__ = ["RETRY_HEADER_PREFIX", "ParkedKeys", "RetryState", "RetryTiers", "original_headers", "retry_topic_name"]

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


class RetryTiers:
    """The group's tiers: which comes next for a record, and its copy published there until acknowledged."""

    def __init__(
        self,
        *,
        publisher: EventPublisher,
        topics: Sequence[str],
        delays_s: Sequence[float],
        acked: UntilAcked,
    ) -> None:
        self._publisher = publisher
        self.topics = list(topics)
        self._delays = list(delays_s)
        self._acked = acked

    def next_tier(self, state: RetryState | None) -> int | None:
        """The 1-based tier a retriable failure goes to next, or None when the tiers are used up."""
        tier = 1 if state is None else state.tier + 1
        return tier if tier <= len(self.topics) else None

    async def copy_to(
        self, record: ConsumedRecord, tier: int, *, state: RetryState | None, attempts: int, first_failure: datetime
    ) -> bool:
        """Copy ``record`` to retry tier ``tier``, due after that tier's delay; False when stopping first."""
        origin = state.origin if state else (record.topic, record.partition, record.offset)
        first_ms = state.first_failure_ms if state else int(first_failure.timestamp() * 1000)
        due_ms = int(time.time() * 1000 + self._delays[tier - 1] * 1000)
        new_state = RetryState(tier, due_ms, origin, first_ms, attempts)
        copy = OutgoingRecord(
            self.topics[tier - 1], record.key, record.value or b"", original_headers(record) + new_state.headers()
        )
        return await self._acked(lambda: self._publisher.publish_record(copy), record, "retry copy")
