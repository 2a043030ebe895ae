"""The one I/O seam of the consumer runtime: group membership, fetch, commit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

__all__ = ["ConsumedRecord", "ConsumerTransport", "PartitionsCallback", "PlainRecord", "TopicPartition"]


class TopicPartition(NamedTuple):
    """A partition of a topic (equal to aiokafka's ``TopicPartition`` tuple)."""

    topic: str
    partition: int


class ConsumedRecord(Protocol):
    """A fetched record; aiokafka's ``ConsumerRecord`` has this shape."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True, slots=True)
class PlainRecord:
    """A ``ConsumedRecord`` as a plain value (the fake's records; a retried record's original)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


PartitionsCallback = Callable[[set[TopicPartition]], Awaitable[None]]


class ConsumerTransport(Protocol):
    """What the runtime needs from a Kafka consumer-group client.

    ``KafkaConsumerTransport`` talks to a broker; ``InMemoryConsumerTransport``
    is the fake for fast tests. Both raise only ``schemas.errors`` types.
    """

    async def start(self, topics: list[str], on_assigned: PartitionsCallback, on_revoked: PartitionsCallback) -> None:
        """Join the group for ``topics``; the callbacks run on every rebalance."""

    async def stop(self) -> None:
        """Leave the group and disconnect."""

    async def fetch(self, timeout_s: float, max_records: int) -> dict[TopicPartition, list[ConsumedRecord]]:
        """Records from the partitions assigned and not paused; empty after ``timeout_s``."""
        ...

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit the next offset to read of each partition; ``CommitFailedError`` on failure."""

    async def committed(self, partition: TopicPartition) -> int | None:
        """The group's committed offset of a partition, if any."""
        ...

    def pause(self, partitions: set[TopicPartition]) -> None:
        """Stop fetching these partitions until ``resume``."""

    def resume(self, partitions: set[TopicPartition]) -> None:
        """Fetch these partitions again."""

    def highwater(self, partition: TopicPartition) -> int | None:
        """The partition's end offset as the last fetch reported it."""
        ...

    async def ensure_topics(self, names: list[str], *, partitions: int, replication: int) -> None:
        """Create the topics that do not exist yet (the group's retry topics)."""
