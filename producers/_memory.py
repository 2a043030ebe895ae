"""An in-memory broker for fast unit tests: the fake beside the Kafka transport.

It keeps Kafka's rules that matter to callers: topics must exist, keys are
partitioned with murmur2 as the Java client does, offsets grow per partition.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from schemas.errors import BrokerUnavailableError, PublishFailedError, UnknownTopicError

from ._partitioner import murmur2_partition
from ._transport import Delivery, DoneCallback, OutgoingRecord

__all__ = ["InMemoryBroker", "InMemoryProducerTransport", "StoredRecord"]


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as the fake broker keeps it."""

    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp_ms: int


@dataclass
class InMemoryBroker:
    """Topics and partitions in memory. ``available=False`` simulates an unreachable broker.

    Example: ``broker = InMemoryBroker(); broker.create_topic("session", 3)``
    """

    topics: dict[str, list[list[StoredRecord]]] = field(default_factory=dict)
    available: bool = True
    group_offsets: dict[str, dict[tuple[str, int], int]] = field(default_factory=dict)
    """Committed offsets by consumer group, then (topic, partition)."""
    _round_robin: int = 0

    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create a topic (no-op if it exists)."""
        self.topics.setdefault(name, [[] for _ in range(partitions)])

    def records(self, topic: str) -> list[StoredRecord]:
        """Every record of a topic, partition by partition."""
        return [record for partition in self.topics.get(topic, []) for record in partition]

    def append(self, record: OutgoingRecord) -> Delivery:
        """Store a record where Kafka would."""
        if not self.available:
            raise BrokerUnavailableError("in-memory broker is unavailable")
        partitions = self.topics.get(record.topic)
        if partitions is None:
            raise UnknownTopicError(record.topic, sorted(self.topics))
        if record.key is None:
            self._round_robin += 1
            index = self._round_robin % len(partitions)
        else:
            index = murmur2_partition(record.key, len(partitions))
        log = partitions[index]
        stored = StoredRecord(len(log), record.key, record.value, list(record.headers), int(time.time() * 1000))
        log.append(stored)
        return Delivery(record.topic, index, stored.offset)

    def producer(self) -> InMemoryProducerTransport:
        """A producer transport writing to this broker."""
        return InMemoryProducerTransport(self)


class InMemoryProducerTransport:
    """``ProducerTransport`` over an ``InMemoryBroker``; acknowledges at once."""

    def __init__(self, broker: InMemoryBroker) -> None:
        self.broker = broker
        self.started = False

    async def start(self) -> None:
        """Fail like Kafka when the broker is unavailable."""
        if not self.broker.available:
            raise BrokerUnavailableError("in-memory broker is unavailable")
        self.started = True

    async def stop(self) -> None:
        """Nothing is buffered, so nothing to flush."""
        self.started = False

    async def topic_names(self) -> set[str]:
        """The broker's topics."""
        return set(self.broker.topics)

    async def enqueue(self, record: OutgoingRecord) -> asyncio.Future[Delivery]:
        """Store the record; the future is already resolved (or failed)."""
        if not self.started:
            raise PublishFailedError("the producer is not started", retriable=False)
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        try:
            future.set_result(self.broker.append(record))
        except (UnknownTopicError, BrokerUnavailableError) as exc:
            future.set_exception(exc)
        return future

    async def append(self, record: OutgoingRecord, token: object, done: DoneCallback) -> None:
        """Store the record; report on the next turn of the event loop."""
        if not self.started:
            raise PublishFailedError("the producer is not started", retriable=False)
        loop = asyncio.get_running_loop()
        try:
            self.broker.append(record)
        except (UnknownTopicError, BrokerUnavailableError) as exc:
            loop.call_soon(done, token, exc)
        else:
            loop.call_soon(done, token, None)  # acknowledged a moment later, as by a broker

    async def flush(self) -> None:
        """Nothing is buffered."""
