"""An in-memory broker for fast unit tests: the fake beside the Kafka transport.

It keeps Kafka's rules that matter to callers: topics must exist, keys are
partitioned with murmur2 as the Java client does, offsets grow per partition.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from schemas.errors import BrokerUnavailableError, PublishFailedError, UnknownTopicError

from ._transport import Delivery, OutgoingRecord

__all__ = ["InMemoryBroker", "InMemoryProducerTransport", "StoredRecord", "murmur2_partition"]


def _murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (as in the Java client's default partitioner)."""
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    h = (seed ^ length) & 0xFFFFFFFF
    full = length - length % 4
    for i in range(0, full, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length % 4
    if rest >= 3:
        h ^= data[full + 2] << 16
    if rest >= 2:
        h ^= data[full + 1] << 8
    if rest >= 1:
        h ^= data[full]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key``."""
    return (_murmur2(key) & 0x7FFFFFFF) % partitions


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

    async def flush(self) -> None:
        """Nothing is buffered."""
