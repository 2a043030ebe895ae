"""A consumer-group member over ``InMemoryBroker``: the fake beside ``KafkaConsumerTransport``.

One member per group gets every partition of its topics; commits are kept on
the broker, so a new member of the same group resumes where the last one
committed, as in Kafka.
"""

from __future__ import annotations

import asyncio
import time

from producers import InMemoryBroker
from schemas.errors import BrokerError, BrokerUnavailableError, CommitFailedError, UnknownTopicError

from ._transport import ConsumedRecord, PartitionsCallback, PlainRecord, TopicPartition

__all__ = ["InMemoryConsumerTransport"]

_POLL_S = 0.002


class InMemoryConsumerTransport:
    """``ConsumerTransport`` over an ``InMemoryBroker``. Example: ``InMemoryConsumerTransport(broker, "credits")``"""

    def __init__(self, broker: InMemoryBroker, group_id: str, *, auto_offset_reset: str = "earliest") -> None:
        self.broker = broker
        self.group_id = group_id
        self._reset_to_end = auto_offset_reset == "latest"
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._on_revoked: PartitionsCallback | None = None
        self._started = False

    async def start(self, topics: list[str], on_assigned: PartitionsCallback, on_revoked: PartitionsCallback) -> None:
        """Take every partition of ``topics`` and resume from the group's commits."""
        if not self.broker.available:
            raise BrokerUnavailableError("in-memory broker is unavailable")
        for topic in topics:
            if topic not in self.broker.topics:
                raise UnknownTopicError(topic, sorted(self.broker.topics))
        committed = self.broker.group_offsets.setdefault(self.group_id, {})
        for topic in topics:
            for index, log in enumerate(self.broker.topics[topic]):
                tp = TopicPartition(topic, index)
                default = len(log) if self._reset_to_end else 0
                self._positions[tp] = committed.get((topic, index), default)
        self._on_revoked = on_revoked
        self._started = True
        await on_assigned(set(self._positions))

    async def stop(self) -> None:
        """Revoke everything (as leaving a group does) and stop."""
        if self._started and self._on_revoked is not None:
            await self._on_revoked(set(self._positions))
        self._started = False
        self._positions.clear()

    async def fetch(self, timeout_s: float, max_records: int) -> dict[TopicPartition, list[ConsumedRecord]]:
        """Records after each position; waits up to ``timeout_s`` for some."""
        deadline = time.monotonic() + timeout_s
        while True:
            batch = self._take(max_records)
            if batch or time.monotonic() >= deadline:
                return batch
            await asyncio.sleep(_POLL_S)

    def _take(self, max_records: int) -> dict[TopicPartition, list[ConsumedRecord]]:
        if not self._started:
            raise BrokerError("the consumer is not started", retriable=False)
        batch: dict[TopicPartition, list[ConsumedRecord]] = {}
        budget = max_records
        for tp, position in self._positions.items():
            if tp in self._paused or budget <= 0:
                continue
            log = self.broker.topics[tp.topic][tp.partition]
            stored = self.broker.visible(log, position, budget)  # read_committed: up to the stable end
            if stored:
                records: list[ConsumedRecord] = [
                    PlainRecord(tp.topic, tp.partition, r.offset, r.timestamp_ms, r.key, r.value, r.headers)
                    for r in stored
                    if self.broker.readable(r)
                ]
                if records:
                    batch[tp] = records
                self._positions[tp] = position + len(stored)
                budget -= len(stored)
        return batch

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Keep the offsets on the broker under this group."""
        if not self.broker.available:
            raise CommitFailedError("in-memory broker is unavailable")
        committed = self.broker.group_offsets.setdefault(self.group_id, {})
        for tp, offset in offsets.items():
            committed[(tp.topic, tp.partition)] = offset

    async def committed(self, partition: TopicPartition) -> int | None:
        """The group's committed offset."""
        return self.broker.group_offsets.get(self.group_id, {}).get((partition.topic, partition.partition))

    def pause(self, partitions: set[TopicPartition]) -> None:
        """Stop returning records of these partitions."""
        self._paused |= partitions

    def resume(self, partitions: set[TopicPartition]) -> None:
        """Return records of these partitions again."""
        self._paused -= partitions

    def highwater(self, partition: TopicPartition) -> int | None:
        """The partition's last stable offset (what a read_committed consumer sees as its end)."""
        return self.broker.stable_end(self.broker.topics[partition.topic][partition.partition])

    async def ensure_topics(self, names: list[str], *, partitions: int, replication: int) -> None:
        """Create missing topics on the fake broker."""
        for name in names:
            self.broker.create_topic(name, partitions)
