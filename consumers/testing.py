"""In-memory fakes of the broker and of both Kafka transports, for fast unit tests (services' too).

``InMemoryBroker`` keeps Kafka's rules that matter to callers: topics must exist, keys are
partitioned with murmur2 as the Java client does, offsets grow per partition, and records of a
transaction take their offsets when sent but are read (``visible``) only once it commits; an
aborted transaction's are never read. ``InMemoryProducerTransport`` publishes to it (the fake
beside ``KafkaProducerTransport``); ``InMemoryConsumerTransport`` is a group member reading it
(the fake beside ``KafkaConsumerTransport``): one member per group gets every partition of its
topics, and commits are kept on the broker, so a new member resumes where the last one committed.

Example::

    broker = InMemoryBroker()
    broker.create_topic("session", 3)
    async with EventPublisher(transport=broker.producer_transport(), config=config) as publisher:
        await publisher.publish(event)
    transport = InMemoryConsumerTransport(broker, "credits")
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from producers import Delivery, DoneCallback, OutgoingRecord, murmur2_partition
from schemas.errors import BrokerError, BrokerUnavailableError, CommitFailedError, PublishFailedError, UnknownTopicError

from ._transport import ConsumedRecord, PartitionsCallback, PlainRecord, TopicPartition

__all__ = ["InMemoryBroker", "InMemoryConsumerTransport", "InMemoryProducerTransport", "StoredRecord"]


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as the fake broker keeps it."""

    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp_ms: int
    transaction: int | None = None
    """The transaction that wrote the record, if any."""


@dataclass
class InMemoryBroker:
    """Topics and partitions in memory. ``available=False`` simulates an unreachable broker.

    Example: ``broker = InMemoryBroker(); broker.create_topic("session", 3)``
    """

    topics: dict[str, list[list[StoredRecord]]] = field(default_factory=dict)
    available: bool = True
    group_offsets: dict[str, dict[tuple[str, int], int]] = field(default_factory=dict)
    """Committed offsets by consumer group, then (topic, partition)."""
    open_transactions: set[int] = field(default_factory=set)
    aborted_transactions: set[int] = field(default_factory=set)
    _round_robin: int = 0
    _transactions: int = 0

    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create a topic (no-op if it exists)."""
        self.topics.setdefault(name, [[] for _ in range(partitions)])

    def records(self, topic: str) -> list[StoredRecord]:
        """Every record of a topic that a read_committed consumer reads, partition by partition."""
        logs = self.topics.get(topic, [])
        return [record for log in logs for record in self.visible(log, 0, len(log)) if self.readable(record)]

    def stable_end(self, log: list[StoredRecord]) -> int:
        """The partition's last stable offset: its first record of a still open transaction, else its end."""
        if self.open_transactions:
            for record in log:
                if record.transaction in self.open_transactions:
                    return record.offset
        return len(log)

    def visible(self, log: list[StoredRecord], start: int, count: int) -> list[StoredRecord]:
        """Up to ``count`` stored records from offset ``start`` below the stable end (aborted ones included)."""
        return log[start : min(start + count, self.stable_end(log))]

    def readable(self, record: StoredRecord) -> bool:
        """False for a record of an aborted transaction (read_committed consumers skip it)."""
        return record.transaction is None or record.transaction not in self.aborted_transactions

    def begin_transaction(self) -> int:
        """A new open transaction's id."""
        self._transactions += 1
        self.open_transactions.add(self._transactions)
        return self._transactions

    def end_transaction(self, transaction: int, *, commit: bool) -> None:
        """Commit or abort an open transaction."""
        self.open_transactions.discard(transaction)
        if not commit:
            self.aborted_transactions.add(transaction)

    def append(self, record: OutgoingRecord, transaction: int | None = None) -> Delivery:
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
        now_ms = int(time.time() * 1000)
        stored = StoredRecord(len(log), record.key, record.value, list(record.headers), now_ms, transaction)
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
        self.transaction: int | None = None

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
            future.set_result(self.broker.append(record, self.transaction))
        except (UnknownTopicError, BrokerUnavailableError) as exc:
            future.set_exception(exc)
        return future

    async def append(self, record: OutgoingRecord, token: object, done: DoneCallback) -> None:
        """Store the record; report on the next turn of the event loop."""
        if not self.started:
            raise PublishFailedError("the producer is not started", retriable=False)
        loop = asyncio.get_running_loop()
        try:
            self.broker.append(record, self.transaction)
        except (UnknownTopicError, BrokerUnavailableError) as exc:
            loop.call_soon(done, token, exc)
        else:
            loop.call_soon(done, token, None)  # acknowledged a moment later, as by a broker

    async def flush(self) -> None:
        """Nothing is buffered."""

    async def begin_transaction(self) -> None:
        """Open a transaction on the fake broker."""
        if self.transaction is not None:
            raise PublishFailedError("a transaction is already open", retriable=False)
        self.transaction = self.broker.begin_transaction()

    async def commit_transaction(self) -> None:
        """Make the transaction's records readable."""
        await self._end(commit=True)

    async def abort_transaction(self) -> None:
        """Hide the transaction's records for good."""
        await self._end(commit=False)

    async def _end(self, *, commit: bool) -> None:
        transaction, self.transaction = self.transaction, None
        if transaction is None:
            raise PublishFailedError("no transaction is open", retriable=False)
        self.broker.end_transaction(transaction, commit=commit)


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
