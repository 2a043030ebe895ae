"""The one I/O seam of the publisher: something that takes records and acknowledges them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

__all__ = ["Delivery", "DoneCallback", "OutgoingRecord", "ProducerTransport"]

DoneCallback = Callable[[object, BaseException | None], None]
"""``done(token, error)``: a fire-and-forget record was acknowledged (error None) or failed."""


class OutgoingRecord(NamedTuple):
    """A record ready for the wire (a tuple: the publish path makes one per event)."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the broker stored a record."""

    topic: str
    partition: int
    offset: int


class ProducerTransport(Protocol):
    """What the publisher needs from a Kafka client.

    ``KafkaProducerTransport`` talks to a broker; ``InMemoryBroker.producer()``
    is the fake for fast tests. Both raise only ``schemas.errors`` types.
    """

    async def start(self) -> None:
        """Connect; ``BrokerUnavailableError`` when no broker answers in time."""

    async def stop(self) -> None:
        """Deliver what is buffered (bounded by the delivery timeout) and disconnect."""

    async def topic_names(self) -> set[str]:
        """The topics that exist on the broker (never creates one)."""
        ...

    async def enqueue(self, record: OutgoingRecord) -> asyncio.Future[Delivery]:
        """Buffer a record, waiting for room; the future resolves when it is acknowledged, and fails (at the latest
        with ``PublishTimeoutError`` once the delivery timeout has passed) when it is not: the publisher keeps no
        timer of its own per record."""
        ...

    async def append(self, record: OutgoingRecord, token: object, done: DoneCallback) -> None:
        """Fire and forget: buffer a record (batched per partition); ``done(token, error)`` follows."""

    async def flush(self) -> None:
        """Send everything buffered now."""

    async def begin_transaction(self) -> None:
        """Open a transaction: what is sent until it ends is committed or aborted as a whole."""

    async def commit_transaction(self) -> None:
        """Commit the open transaction (everything sent in it must be acknowledged first)."""

    async def abort_transaction(self) -> None:
        """Abort the open transaction: read_committed consumers never see its records."""
