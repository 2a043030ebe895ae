"""The transactional outbox: events written in the service's own database transaction, sent after it commits.

``Outbox.add`` validates and encodes an event exactly as ``EventPublisher`` would (topic, key, Avro body,
headers, correlation and causation of the caller's context) and inserts the record into ``eventbus_outbox``
through the caller's connection. Nothing reaches Kafka here: the relay (``consumers.OutboxRelay``, run by
``eventbus relay``) sends committed rows, so a rolled-back transaction sends nothing and a committed one is
never lost. The tables come with the project's migrations (``consumers.OUTBOX_MIGRATION``).

Example::

    async with database.begin() as conn:
        await conn.execute(insert(bookings).values(...))
        await outbox.publish(conn, "session:created", {...})
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    insert,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from schemas import CATALOG, Catalog, Event

from ._config import KafkaConnection, PublisherConfig
from ._partitioner import murmur2
from ._publisher import EventPublisher
from ._transport import OutgoingRecord

__all__ = [
    "OUTBOX_BUCKETS",
    "OUTBOX_TABLE",
    "Outbox",
    "bucket_of",
    "decode_headers",
    "encode_headers",
    "record_headers",
]

OUTBOX_BUCKETS = 64
"""Keys hash into this many buckets; a relay slot owns a fixed subset of them, so one key is always sent by
one relay at a time, in insertion order."""

_metadata = MetaData()
OUTBOX_TABLE = Table(
    "eventbus_outbox",
    _metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("scope", String(200), nullable=False),
    Column("bucket", SmallInteger, nullable=False),
    Column("event_id", String(36), nullable=False),
    Column("event_type", String(200), nullable=False),
    Column("topic", String(255), nullable=False),
    Column("record_key", LargeBinary, nullable=True),
    Column("record_value", LargeBinary, nullable=False),
    Column("headers", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)
"""The rows waiting for the relay (created by ``consumers.OUTBOX_MIGRATION``): one encoded record each."""


def bucket_of(key: bytes | None) -> int:
    """The bucket of a record key (murmur2, as Kafka's partitioner). Example: ``bucket_of(b"s-1") < 64``"""
    return 0 if key is None else murmur2(key) % OUTBOX_BUCKETS


def encode_headers(headers: Sequence[tuple[str, bytes]]) -> str:
    """Record headers as JSON text for the outbox row (byte values kept exactly, through latin-1)."""
    return json.dumps([[name, value.decode("latin-1")] for name, value in headers], separators=(",", ":"))


def decode_headers(text: str) -> list[tuple[str, bytes]]:
    """The headers ``encode_headers`` stored."""
    return [(str(name), str(value).encode("latin-1")) for name, value in json.loads(text)] if text else []


def record_headers(event_type: str, event_id: str, extra: str) -> list[tuple[str, bytes]]:
    """A row's record headers: ``event-type`` and ``event-id`` (from their columns), then the stored others.

    Example: ``record_headers("session:created", "5f0c...", "")[0] == ("event-type", b"session:created")``
    """
    headers = [("event-type", event_type.encode()), ("event-id", event_id.encode())]
    if extra:
        headers += decode_headers(extra)
    return headers


_STANDARD = ("event-type", "event-id")


def _extra_headers(record: OutgoingRecord) -> str:
    """The headers to store: all but ``event-type`` and ``event-id``, which the row's columns hold (``""``: none)."""
    if tuple(name for name, _ in record.headers[:2]) != _STANDARD:  # the publisher always puts them first
        msg = f"a record's first headers must be {_STANDARD}, not {[name for name, _ in record.headers[:2]]}"
        raise ValueError(msg)
    return encode_headers(record.headers[2:]) if len(record.headers) > 2 else ""


class Outbox:
    """Adds events to the outbox table inside the caller's transaction; ``eventbus relay`` sends them.

    The records are the ones ``EventPublisher`` would send (same topic names, keys, encoding and headers),
    so ``connection`` and ``config`` are the ones the service's publisher would use (topic prefix, service
    name, message size limit). Bad input raises before anything is written: ``EventValidationError``,
    ``UnknownEventTypeError``, ``MessageTooLargeError``.

    Example: ``await Outbox(config=PublisherConfig(service="booking")).add(conn, event)``
    """

    def __init__(
        self,
        *,
        connection: KafkaConnection | None = None,
        config: PublisherConfig | None = None,
        catalog: Catalog = CATALOG,
    ) -> None:
        self.catalog = catalog
        # Never started: only its ``prepare`` (validation, encoding, headers) is used.
        self._records = EventPublisher(connection=connection, config=config, catalog=catalog)
        self.scope = self._records.connection.topic_prefix
        """The topic prefix: a relay sends the rows of its own prefix only (deployments may share a database)."""

    def record_of(self, event: Event) -> OutgoingRecord:
        """The record the relay will send for ``event`` (what ``add`` stores)."""
        return self._records.prepare(event)

    async def add(self, conn: AsyncConnection | AsyncSession, event: Event) -> UUID:
        """Insert ``event`` into the outbox through ``conn``, in its open transaction; returns the event id.

        Sent by the relay once that transaction commits; never if it rolls back.
        Example: ``await outbox.add(conn, SessionCreated(...))``
        """
        await self.add_many(conn, [event])
        return event.event_id

    async def add_many(self, conn: AsyncConnection | AsyncSession, events: Sequence[Event]) -> list[UUID]:
        """Insert several events in order (one statement); all are checked before any is written."""
        records = [self._records.prepare(event) for event in events]
        if not records:
            return []
        now = time.time()
        rows = [
            {
                "scope": self.scope,
                "bucket": bucket_of(record.key),
                "event_id": str(event.event_id),
                "event_type": event.event_type,
                "topic": record.topic,
                "record_key": record.key,
                "record_value": record.value,
                "headers": _extra_headers(record),
                "created_at": now,
            }
            for record, event in zip(records, events, strict=True)
        ]
        if len(rows) == 1:
            await conn.execute(insert(OUTBOX_TABLE).values(rows[0]))
        else:
            await conn.execute(insert(OUTBOX_TABLE), rows)
        return [event.event_id for event in events]

    async def publish(self, conn: AsyncConnection | AsyncSession, event_type: str, data: Mapping[str, Any]) -> Event:
        """The original ``publish(type, data)`` shape, through the outbox: validated, then ``add``-ed.

        Returns the event (its id, time and metadata filled in). ``EventValidationError`` names the field.
        Example: ``await outbox.publish(conn, "session:created", {"session_id": ..., ...})``
        """
        event = self.catalog.parse(event_type, data)
        await self.add(conn, event)
        return event
