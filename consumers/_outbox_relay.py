"""The outbox relay: committed ``eventbus_outbox`` rows to Kafka, in order per key, shared among relays.

Work sharing. Keys hash into ``OUTBOX_BUCKETS`` buckets; ``RelayConfig.slots`` slots each own a fixed set of
buckets (``bucket % slots``). A relay leases slots in ``eventbus_outbox_leases`` (renewed every third of
``lease_s``) and takes at most its fair share of them (``ceil(slots / live relays)``, relays seen in
``eventbus_outbox_relays``); a relay that dies stops renewing, and its slots go to the others when the lease
runs out. One slot is worked by one task: rows in id order, ``batch_size`` at a time, so a key's events go
out in the order they were inserted. Everything is scoped by the topic prefix (``scope``): deployments with
different prefixes may share a database, and each relay sends its own deployment's rows only.

Delivery.
- Exactly once (Apache Kafka, idempotent producers): each slot has its own transactional producer
  (``{transactional_id_prefix}-{slot}``, so a relay taking a slot over fences the one that had it). A batch
  and a progress record (the batch's row ids, keyed by slot, on the ``outbox-progress`` topic) are committed
  in one Kafka transaction; the rows are deleted afterwards. A relay taking a slot first reads the committed
  progress and deletes the rows listed there: those were sent by a relay killed before its delete. A
  relay killed at any point leaves no duplicate in the log.
- At least once (the embedded broker: no transactions): a batch is published with ``acks=all``, then its
  rows are deleted; a relay killed in between sends them again with the same event ids, and consumers'
  processed-events store applies them once.

Wake-ups: on PostgreSQL an insert notifies ``eventbus_outbox`` (a statement trigger) and the relay listens;
polling every ``poll_interval_s`` is the fallback and SQLite's only way. A row that cannot be published (too
large, unknown topic, refused by the broker) is moved to ``eventbus_outbox_parked`` with its error and the
key goes on; transient failures (database or broker away) are retried until they pass.

Example::

    relay = OutboxRelay(database, connection=settings.connection(), publisher_config=settings.publisher_config())
    await relay.run(stop)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import bindparam, delete, select, text

from producers import (
    OUTBOX_BUCKETS,
    OUTBOX_TABLE,
    Delivery,
    EventPublisher,
    KafkaConnection,
    OutgoingRecord,
    PublisherConfig,
    convert_kafka_error,
    record_headers,
)
from schemas.errors import BrokerTimeoutError, EventBusError, MessageTooLargeError, StorageError

from ._backoff import is_retriable
from ._database import Database, Migration
from ._patience import Patience, RetryPolicy

__all__ = [
    "OUTBOX_CHANNEL",
    "OUTBOX_MIGRATION",
    "OUTBOX_PROGRESS_TOPIC",
    "OutboxRelay",
    "OutboxStatus",
    "RelayConfig",
    "RelayStats",
    "outbox_status",
]

log = logging.getLogger("eventbus.outbox")

OUTBOX_CHANNEL = "eventbus_outbox"
"""The PostgreSQL notification channel an outbox insert signals."""
OUTBOX_PROGRESS_TOPIC = "outbox-progress"
"""The (compacted) topic of the exactly-once relay's progress, written in the same transactions as the events."""

_COMMON_COLUMNS = (
    " scope VARCHAR(200) NOT NULL, bucket SMALLINT NOT NULL, event_id VARCHAR(36) NOT NULL,"
    " event_type VARCHAR(200) NOT NULL,"
    " topic VARCHAR(255) NOT NULL, record_key {blob}, record_value {blob} NOT NULL, headers TEXT NOT NULL,"
    " created_at DOUBLE PRECISION NOT NULL"
)

OUTBOX_MIGRATION = Migration(
    50,
    "transactional outbox",
    [
        "CREATE TABLE IF NOT EXISTS eventbus_outbox_leases ("
        " scope VARCHAR(200) NOT NULL, slot INTEGER NOT NULL, slots INTEGER NOT NULL, owner VARCHAR(200) NOT NULL,"
        " expires_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (scope, slot))",
        "CREATE TABLE IF NOT EXISTS eventbus_outbox_relays ("
        " owner VARCHAR(200) PRIMARY KEY, scope VARCHAR(200) NOT NULL, slots_owned INTEGER NOT NULL,"
        " seen_at DOUBLE PRECISION NOT NULL,"
        " sent BIGINT NOT NULL, parked BIGINT NOT NULL, errors BIGINT NOT NULL, rate DOUBLE PRECISION NOT NULL)",
    ],
    postgresql=[
        "CREATE TABLE IF NOT EXISTS eventbus_outbox (id BIGSERIAL PRIMARY KEY,"
        + _COMMON_COLUMNS.format(blob="BYTEA")
        + ")",
        "CREATE TABLE IF NOT EXISTS eventbus_outbox_parked (id BIGINT PRIMARY KEY,"
        + _COMMON_COLUMNS.format(blob="BYTEA")
        + ", error TEXT NOT NULL, parked_at DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX IF NOT EXISTS eventbus_outbox_scope_bucket_id ON eventbus_outbox (scope, bucket, id)",
        "CREATE OR REPLACE FUNCTION eventbus_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS"
        f" $$ BEGIN PERFORM pg_notify('{OUTBOX_CHANNEL}', ''); RETURN NULL; END $$",
        "DROP TRIGGER IF EXISTS eventbus_outbox_inserted ON eventbus_outbox",
        "CREATE TRIGGER eventbus_outbox_inserted AFTER INSERT ON eventbus_outbox"
        " FOR EACH STATEMENT EXECUTE FUNCTION eventbus_outbox_notify()",
    ],
    sqlite=[
        # AUTOINCREMENT: an id is never reused after its row is deleted (progress records name ids)
        "CREATE TABLE IF NOT EXISTS eventbus_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        + _COMMON_COLUMNS.format(blob="BLOB")
        + ")",
        "CREATE TABLE IF NOT EXISTS eventbus_outbox_parked (id INTEGER PRIMARY KEY,"
        + _COMMON_COLUMNS.format(blob="BLOB")
        + ", error TEXT NOT NULL, parked_at DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX IF NOT EXISTS eventbus_outbox_scope_bucket_id ON eventbus_outbox (scope, bucket, id)",
    ],
)
"""The outbox tables (add it to the service's migrations; ``eventbus`` commands apply it)."""


class RelayConfig(BaseModel):
    """How the relay shares, paces and delivers. Example: ``RelayConfig(slots=8, lease_s=10)``"""

    model_config = ConfigDict(frozen=True, extra="forbid")

    slots: int = Field(default=4, ge=1, le=OUTBOX_BUCKETS)
    """Units of work shared among relays (each one task and, exactly once, one transactional producer).
    Every relay of a database must use the same number."""
    batch_size: int = Field(default=1000, ge=1, le=10_000)
    """Rows sent per batch (per transaction, exactly once)."""
    poll_interval_s: float = Field(default=0.5, gt=0)
    """How often an idle slot looks for rows without a notification (SQLite: the only wake-up)."""
    lease_s: float = Field(default=15.0, gt=0)
    """How long a slot stays with a relay that stopped renewing it (a killed one) before another takes it."""
    exactly_once: bool | None = None
    """Kafka transactions with the progress in them; None: when the publisher is idempotent (Apache Kafka)."""
    transactional_id_prefix: str = "eventbus-outbox"
    """Slot ``n``'s producer is ``{prefix}-{n}``: the same across restarts, so a new owner fences the old."""


@dataclass
class RelayStats:
    """What one relay did since it started."""

    sent: int = 0
    parked: int = 0
    errors: int = 0
    batches: int = 0
    slots_owned: int = 0
    backlog: int = 0
    oldest_age_s: float = 0.0
    rate: float = 0.0
    """Events per second over the last heartbeat interval."""


@dataclass(frozen=True)
class _Row:
    id: int
    event_id: str
    event_type: str
    record: OutgoingRecord


@dataclass
class _Outcome:
    """What became of a batch: sent, to park (cannot be published), to try again; or split it (one per try)."""

    sent: list[_Row] = field(default_factory=list)
    poison: list[tuple[_Row, EventBusError]] = field(default_factory=list)
    retry: list[tuple[_Row, EventBusError]] = field(default_factory=list)
    split: bool = False


class _SlotLost(Exception):  # noqa: N818 - a signal between the relay's tasks, never raised to a caller
    """The slot's lease is gone (expired, taken, or the producer fenced): the slot's task ends."""


@dataclass
class _Slot:
    number: int
    buckets: list[int]
    expires_at: float = 0.0
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    leaving: bool = False
    sent: list[int] = field(default_factory=list)
    """Ids of rows sent (and, exactly once, committed) but not deleted yet: the next fetch deletes them."""


class OutboxRelay:
    """Sends committed outbox rows to Kafka, sharing the slots with any other relay of the same database.

    ``run(stop)`` works until ``stop`` is set; ``stats`` tells what it did. Give the same ``publisher_config``
    as the services' publishers (acks, idempotence, message size). ``registry``: Prometheus metrics
    (``eventbus_outbox_*``) on it. ``publisher``: a started publisher to send with instead (at least once;
    its owner starts and closes it), e.g. on ``consumers.testing.InMemoryBroker`` in unit tests.
    Example: ``await OutboxRelay(db, connection=c, publisher_config=p).run(stop)``
    """

    def __init__(
        self,
        database: Database,
        *,
        connection: KafkaConnection | None = None,
        publisher_config: PublisherConfig | None = None,
        config: RelayConfig | None = None,
        owner: str | None = None,
        registry: CollectorRegistry | None = None,
        publisher: EventPublisher | None = None,
    ) -> None:
        self.database = database
        self.connection = connection or (publisher.connection if publisher is not None else KafkaConnection())
        self.publisher_config = publisher_config or (publisher.config if publisher is not None else PublisherConfig())
        self.config = config or RelayConfig()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        exactly_once = self.config.exactly_once
        if publisher is not None:
            exactly_once = False  # one given publisher, started and closed by its owner: no per-slot producers
        self.exactly_once = self.publisher_config.enable_idempotence if exactly_once is None else exactly_once
        self._given_publisher = publisher
        self.progress_topic = self.connection.topic(OUTBOX_PROGRESS_TOPIC)
        self.scope = self.connection.topic_prefix
        """Rows, leases and relays are those of this topic prefix: deployments may share a database."""
        self.stats = RelayStats()
        slots = self.config.slots
        self._slots = {n: _Slot(n, [b for b in range(OUTBOX_BUCKETS) if b % slots == n]) for n in range(slots)}
        self._publisher: EventPublisher | None = None
        self._stop = asyncio.Event()
        self._database_patience = Patience("database", RetryPolicy(bound_s=None, max_s=1.0), {"task": "outbox"})
        self._broker_patience = Patience("kafka", RetryPolicy(bound_s=None, max_s=2.0), {"task": "outbox"})
        self._rate_mark = (time.monotonic(), 0)
        self._next_retry_log = 0.0
        if registry is not None:
            registry.register(_RelayCollector(self))

    def transactional_id(self, slot: int) -> str:
        """The transactional id of ``slot``'s producer: per topic prefix, so deployments never fence each other."""
        return f"{self.connection.topic_prefix}{self.config.transactional_id_prefix}-{slot}"

    # -- running -----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set; then finish the batches in flight, give the slots back and return."""
        self._stop = stop
        await self._ensure_leases()
        if self._given_publisher is not None:
            self._publisher = self._given_publisher
        elif not self.exactly_once:
            self._publisher = EventPublisher(connection=self.connection, config=self.publisher_config)
            await self._publisher.start()
        listener = asyncio.create_task(self._listen(), name="outbox-listen")
        try:
            while not stop.is_set():
                await self._heartbeat()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.config.lease_s / 3)
        finally:
            listener.cancel()
            for slot in self._slots.values():
                slot.leaving = True
                slot.wake.set()
            tasks = [slot.task for slot in self._slots.values() if slot.task is not None]
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(EventBusError):
                await self._release_all()
            if self._publisher is not None and self._publisher is not self._given_publisher:
                await self._publisher.close()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    def _wake_all(self) -> None:
        for slot in self._slots.values():
            slot.wake.set()

    async def _listen(self) -> None:
        """PostgreSQL: wake every slot on an outbox notification (reconnecting when the database blinks)."""
        if self.database.dialect != "postgresql":
            return
        import asyncpg  # noqa: PLC0415 - PostgreSQL only

        dsn = self.database.url.replace("postgresql+asyncpg://", "postgresql://", 1)
        while True:
            try:
                conn = await asyncpg.connect(dsn, timeout=10)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                await asyncio.sleep(1.0)
                continue
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
            try:
                await conn.add_listener(OUTBOX_CHANNEL, lambda *_args: self._wake_all())
                self._wake_all()  # whatever was inserted while not listening
                await lost.wait()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                    await conn.close(timeout=2)

    # -- leases ------------------------------------------------------------------------------------

    async def _db(self, op: Any, what: str) -> Any:
        return await self._database_patience.call(op, what=what, stop=self._stop)

    async def _ensure_leases(self) -> None:
        slots = self.config.slots

        async def ensure() -> None:
            async with self.database.begin() as conn:
                found = await conn.execute(
                    text("SELECT slot, slots FROM eventbus_outbox_leases WHERE scope = :c"), {"c": self.scope}
                )
                known = {row[0]: row[1] for row in found}
                other = {count for count in known.values() if count != slots}
                if other:
                    msg = (
                        f"the outbox relays of this database use {sorted(other)[0]} slots, this one {slots}:"
                        " every relay must use the same number (drain the outbox before changing it)"
                    )
                    raise StorageError(msg, retriable=False)
                for number in range(slots):
                    if number not in known:
                        await conn.execute(
                            text(
                                "INSERT INTO eventbus_outbox_leases (scope, slot, slots, owner, expires_at)"
                                " VALUES (:c, :s, :n, '', 0) ON CONFLICT (scope, slot) DO NOTHING"
                            ),
                            {"c": self.scope, "s": number, "n": slots},
                        )

        await self._db(ensure, "preparing the outbox leases")

    async def _heartbeat(self) -> None:
        """Say this relay is alive, renew its leases, take or give back slots to keep a fair share."""
        now = time.time()
        until = now + self.config.lease_s
        for slot in self._slots.values():
            if slot.task is not None and slot.task.done() and not slot.task.cancelled():
                failure = slot.task.exception()
                slot.task = None
                if failure is not None:
                    log.error("outbox slot %d failed", slot.number, exc_info=failure)
        owned = [slot for slot in self._slots.values() if slot.task is not None and not slot.task.done()]
        self._update_rate()

        try:
            share, renewed, taken, backlog, oldest = await self._db(
                partial(self._beat, now, until, owned), "renewing the outbox leases"
            )
        except StorageError:
            if self._stop.is_set():
                return
            raise
        self.stats.backlog = backlog
        self.stats.oldest_age_s = max(0.0, now - oldest) if oldest is not None else 0.0
        for slot in owned:
            if slot.number in renewed:
                slot.expires_at = until
            else:
                log.warning("outbox slot %d: lease lost to another relay", slot.number)
                slot.expires_at = 0.0
                slot.wake.set()
        for number in taken:
            slot = self._slots[number]
            slot.expires_at = until
            slot.leaving = False
            slot.wake = asyncio.Event()
            slot.task = asyncio.create_task(self._work(slot), name=f"outbox-slot-{number}")
        extra = len(renewed) - share
        for number in sorted(renewed, reverse=True)[: max(0, extra)]:
            self._slots[number].leaving = True  # its task gives the lease back after its batch
            self._slots[number].wake.set()
        self.stats.slots_owned = len(renewed) + len(taken)

    async def _beat(
        self, now: float, until: float, owned: list[_Slot]
    ) -> tuple[int, list[int], list[int], int, float | None]:
        """One heartbeat's transaction: the relay's row, its leases renewed, free slots taken up to its share."""
        async with self.database.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO eventbus_outbox_relays"
                    " (owner, scope, slots_owned, seen_at, sent, parked, errors, rate)"
                    " VALUES (:o, :c, :k, :t, :s, :p, :e, :r) ON CONFLICT (owner) DO UPDATE SET"
                    " slots_owned = :k, seen_at = :t, sent = :s, parked = :p, errors = :e, rate = :r"
                ),
                {
                    "o": self.owner,
                    "c": self.scope,
                    "k": len(owned),
                    "t": now,
                    "s": self.stats.sent,
                    "p": self.stats.parked,
                    "e": self.stats.errors,
                    "r": self.stats.rate,
                },
            )
            await conn.execute(
                text("DELETE FROM eventbus_outbox_relays WHERE seen_at < :t"), {"t": now - 10 * self.config.lease_s}
            )
            live = (
                await conn.execute(
                    text("SELECT count(*) FROM eventbus_outbox_relays WHERE scope = :c AND seen_at >= :t"),
                    {"c": self.scope, "t": now - self.config.lease_s},
                )
            ).scalar_one()
            renewed = []
            for slot in owned:
                done = await conn.execute(
                    text(
                        "UPDATE eventbus_outbox_leases SET expires_at = :u"
                        " WHERE scope = :c AND slot = :s AND owner = :o"
                    ),
                    {"u": until, "c": self.scope, "s": slot.number, "o": self.owner},
                )
                if done.rowcount == 1:
                    renewed.append(slot.number)
            share = math.ceil(self.config.slots / max(1, int(live)))
            taken: list[int] = []
            for slot in self._slots.values():
                if len(renewed) + len(taken) >= share:
                    break
                if slot.number in renewed or (slot.task is not None and not slot.task.done()):
                    continue
                done = await conn.execute(
                    text(
                        "UPDATE eventbus_outbox_leases SET owner = :o, expires_at = :u"
                        " WHERE scope = :c AND slot = :s AND (expires_at < :now OR owner = :o OR owner = '')"
                    ),
                    {"o": self.owner, "u": until, "c": self.scope, "s": slot.number, "now": now},
                )
                if done.rowcount == 1:
                    taken.append(slot.number)
            backlog, oldest = (
                await conn.execute(
                    text("SELECT count(*), min(created_at) FROM eventbus_outbox WHERE scope = :c"), {"c": self.scope}
                )
            ).one()
            return share, renewed, taken, int(backlog), oldest

    def _update_rate(self) -> None:
        then, sent = self._rate_mark
        now = time.monotonic()
        if now - then >= 1.0:
            self.stats.rate = (self.stats.sent - sent) / (now - then)
            self._rate_mark = (now, self.stats.sent)

    async def _release(self, slot: _Slot) -> None:
        async def release() -> None:
            async with self.database.begin() as conn:
                await conn.execute(
                    text(
                        "UPDATE eventbus_outbox_leases SET owner = '', expires_at = 0"
                        " WHERE scope = :c AND slot = :s AND owner = :o"
                    ),
                    {"c": self.scope, "s": slot.number, "o": self.owner},
                )

        with contextlib.suppress(EventBusError):
            await asyncio.wait_for(release(), timeout=5)
        slot.expires_at = 0.0

    async def _release_all(self) -> None:
        async with self.database.begin() as conn:
            await conn.execute(
                text("UPDATE eventbus_outbox_leases SET owner = '', expires_at = 0 WHERE scope = :c AND owner = :o"),
                {"c": self.scope, "o": self.owner},
            )
            await conn.execute(text("DELETE FROM eventbus_outbox_relays WHERE owner = :o"), {"o": self.owner})

    # -- one slot ----------------------------------------------------------------------------------

    def _check_lease(self, slot: _Slot) -> None:
        if time.time() >= slot.expires_at:
            raise _SlotLost

    async def _work(self, slot: _Slot) -> None:
        publisher = self._publisher
        try:
            if self.exactly_once:
                config = self.publisher_config.model_copy(
                    update={"transactional_id": self.transactional_id(slot.number)}
                )
                publisher = EventPublisher(connection=self.connection, config=config)
                await self._broker_patience.call(publisher.start, what=f"outbox slot {slot.number}: starting")
                await self._forget_committed()
            assert publisher is not None  # noqa: S101 - started in run() when not transactional
            log.info("outbox slot %d taken (%s)", slot.number, "exactly once" if self.exactly_once else "at least once")
            while not slot.leaving and not self._stop.is_set():
                self._check_lease(slot)
                slot.wake.clear()  # before reading: a notification that comes during the read is not lost
                rows = await self._fetch(slot)
                if not rows:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(slot.wake.wait(), timeout=self.config.poll_interval_s)
                    continue
                await self._relay(slot, publisher, rows)
        except _SlotLost:
            log.info("outbox slot %d: lease over, stopping its work", slot.number)
        except EventBusError as exc:
            if not self._stop.is_set():
                self.stats.errors += 1
                log.error("outbox slot %d stopped: %s", slot.number, exc.message)  # noqa: TRY400 - no traceback
        finally:
            if slot.sent:
                with contextlib.suppress(EventBusError):  # else sent again (at least once) or forgotten by progress
                    await asyncio.wait_for(self._delete(slot.sent), timeout=5)
                slot.sent = []
            if publisher is not None and publisher is not self._publisher:
                with contextlib.suppress(EventBusError):
                    await publisher.close(flush=False)
            await self._release(slot)

    async def _fetch(self, slot: _Slot) -> list[_Row]:
        """Delete the rows sent since the last fetch and read the next batch, in one transaction."""
        query = (
            select(
                OUTBOX_TABLE.c.id,
                OUTBOX_TABLE.c.event_id,
                OUTBOX_TABLE.c.event_type,
                OUTBOX_TABLE.c.topic,
                OUTBOX_TABLE.c.record_key,
                OUTBOX_TABLE.c.record_value,
                OUTBOX_TABLE.c.headers,
            )
            .where(OUTBOX_TABLE.c.scope == self.scope, OUTBOX_TABLE.c.bucket.in_(slot.buckets))
            .order_by(OUTBOX_TABLE.c.id)
            .limit(self.config.batch_size)
        )
        sent = list(slot.sent)

        async def fetch() -> list[_Row]:
            async with self.database.begin() as conn:
                if sent:
                    await conn.execute(self._delete_statement, {"ids": sent})
                found = (await conn.execute(query)).all()
            return [
                _Row(
                    row.id,
                    row.event_id,
                    row.event_type,
                    OutgoingRecord(
                        row.topic,
                        row.record_key,
                        row.record_value,
                        record_headers(row.event_type, row.event_id, row.headers),
                    ),
                )
                for row in found
            ]

        rows: list[_Row] = await self._db(fetch, f"outbox slot {slot.number}: reading rows")
        del slot.sent[: len(sent)]
        return rows

    @property
    def _delete_statement(self) -> Any:
        if self.database.dialect == "postgresql":  # one array parameter: the same statement whatever the count
            return text("DELETE FROM eventbus_outbox WHERE id = ANY(:ids)")
        return delete(OUTBOX_TABLE).where(OUTBOX_TABLE.c.id.in_(bindparam("ids", expanding=True)))

    async def _delete(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        statement = self._delete_statement

        async def remove() -> None:
            async with self.database.begin() as conn:
                await conn.execute(statement, {"ids": list(ids)})

        await self._db(remove, "deleting sent outbox rows")

    async def _park(self, row: _Row, error: EventBusError) -> None:
        """Move a row that cannot be published aside, with its error; its key goes on."""

        async def park() -> None:
            async with self.database.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO eventbus_outbox_parked (id, scope, bucket, event_id, event_type, topic,"
                        " record_key,"
                        " record_value, headers, created_at, error, parked_at)"
                        " SELECT id, scope, bucket, event_id, event_type, topic, record_key, record_value, headers,"
                        " created_at, :error, :now FROM eventbus_outbox WHERE id = :id"
                    ),
                    {"id": row.id, "error": f"{type(error).__name__}: {error.message}", "now": time.time()},
                )
                await conn.execute(text("DELETE FROM eventbus_outbox WHERE id = :id"), {"id": row.id})

        await self._db(park, "parking an outbox row")
        self.stats.parked += 1
        log.error(
            "outbox row %d (%s %s) cannot be published and was parked: %s",
            row.id,
            row.event_type,
            row.event_id,
            error.message,
            extra={"event_id": row.event_id, "event_type": row.event_type},
        )

    async def _relay(self, slot: _Slot, publisher: EventPublisher, rows: list[_Row]) -> None:
        limit = self.publisher_config.max_message_bytes
        pending = []
        for row in rows:
            if len(row.record.value) > limit:
                await self._park(row, MessageTooLargeError(len(row.record.value), limit, row.event_type))
            else:
                pending.append(row)
        failures = 0
        step = len(pending)
        while pending:
            self._check_lease(slot)
            chunk, rest = pending[:step], pending[step:]
            if self.exactly_once:
                outcome = await self._send_in_transaction(slot, publisher, chunk)
            else:
                outcome = await self._send(publisher, chunk)
            if outcome.split:  # a poison row aborted the transaction: find it, one row per transaction
                step = 1
                continue
            slot.sent.extend(row.id for row in outcome.sent)  # deleted with the next fetch, one transaction
            self.stats.sent += len(outcome.sent)
            self.stats.batches += 1
            for row, error in outcome.poison:
                await self._park(row, error)
            pending = [row for row, _ in outcome.retry] + rest
            if outcome.retry:
                if self._stop.is_set():
                    return
                failures += 1
                self.stats.errors += 1
                self._warn_retry(slot, outcome.retry[0][1], failures)
                await asyncio.sleep(min(2.0, 0.05 * 2**failures))
            else:
                failures = 0

    def _warn_retry(self, slot: _Slot, error: EventBusError, failures: int) -> None:
        now = time.monotonic()
        if now >= self._next_retry_log:
            self._next_retry_log = now + 5.0
            log.warning(
                "outbox slot %d: publishing failed (%d tries), retrying: %s", slot.number, failures, error.message
            )

    async def _send(self, publisher: EventPublisher, rows: list[_Row]) -> _Outcome:
        results = await publisher.publish_records([row.record for row in rows])
        outcome = _Outcome()
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, Delivery):
                outcome.sent.append(row)
            elif is_retriable(result):
                outcome.retry.append((row, result))
            else:
                outcome.poison.append((row, result))
        return outcome

    async def _send_in_transaction(self, slot: _Slot, publisher: EventPublisher, rows: list[_Row]) -> _Outcome:
        progress = OutgoingRecord(
            self.progress_topic,
            f"slot-{slot.number}".encode(),
            # every sent row not deleted yet: a relay taking the slot over deletes them instead of sending them again
            json.dumps(
                {"ids": [*slot.sent, *(row.id for row in rows)], "owner": self.owner, "at": time.time()}
            ).encode(),
            [],
        )
        results: list[Delivery | EventBusError] = []
        try:
            async with publisher.transaction():
                results = await publisher.publish_records([*(row.record for row in rows), progress])
                failed = [result for result in results if not isinstance(result, Delivery)]
                if failed:
                    raise failed[0]
        except EventBusError as exc:
            if _fenced(exc):
                raise _SlotLost from exc
            bad = [(row, r) for row, r in zip(rows, results, strict=False) if not isinstance(r, Delivery)]
            if bad and not any(is_retriable(error) for _, error in bad):
                return _Outcome(poison=bad) if len(rows) == 1 else _Outcome(split=True)
            return _Outcome(retry=[(row, exc) for row in rows])  # the whole transaction was aborted
        return _Outcome(sent=rows)

    async def _forget_committed(self) -> None:
        """Delete the rows the committed progress records list: sent by a relay that died before deleting them."""
        ids = await self._broker_patience.call(self._read_progress, what="reading the outbox progress")
        await self._delete(sorted(ids))
        if ids:
            log.info("outbox: %d rows sent before a relay stopped were deleted without sending them again", len(ids))

    async def _read_progress(self) -> set[int]:
        consumer = AIOKafkaConsumer(
            **self.connection.client_options(),
            isolation_level="read_committed",
            enable_auto_commit=False,
            group_id=None,
        )
        latest: dict[bytes, list[int]] = {}
        try:
            await consumer.start()
            assigned = [TopicPartition(self.progress_topic, 0)]  # one partition (infra's topic spec)
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
            ends = await consumer.end_offsets(assigned)  # the last stable offsets, under read_committed
            deadline = time.monotonic() + self.connection.request_timeout_s
            while True:
                behind = [tp for tp in assigned if await consumer.position(tp) < ends[tp]]
                if not behind:
                    break
                if time.monotonic() > deadline:  # never act on part of the progress: that would send twice
                    raise BrokerTimeoutError("reading the outbox progress did not reach its end in time")
                batch = await consumer.getmany(*behind, timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        if record.key is not None and record.value is not None:
                            latest[record.key] = json.loads(record.value)["ids"]
        except KafkaError as exc:
            raise convert_kafka_error(exc, "reading the outbox progress") from exc
        finally:
            with contextlib.suppress(KafkaError, TimeoutError):
                await asyncio.wait_for(consumer.stop(), timeout=self.connection.request_timeout_s)
        return {row_id for ids in latest.values() for row_id in ids}


def _fenced(exc: BaseException) -> bool:
    chain: BaseException | None = exc
    while chain is not None:
        if "Fenced" in type(chain).__name__ or "fenced" in str(chain).lower():
            return True
        chain = chain.__cause__
    return False


@dataclass(frozen=True)
class OutboxStatus:
    """The outbox of one database, for ``eventbus outbox status``."""

    backlog: int
    oldest_age_s: float
    parked: int
    relays: list[dict[str, Any]]
    leases: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape the CLI prints."""
        return {
            "backlog": self.backlog,
            "oldest_age_s": round(self.oldest_age_s, 3),
            "parked": self.parked,
            "publish_rate": round(sum(relay["rate"] for relay in self.relays), 1),
            "errors": sum(relay["errors"] for relay in self.relays),
            "relays": self.relays,
            "leases": self.leases,
        }


async def outbox_status(database: Database, *, scope: str = "", lease_s: float = 15.0) -> OutboxStatus:
    """Backlog, age of the oldest unsent event, parked rows, live relays and who holds which slot.

    ``scope``: the topic prefix of the deployment (its rows, relays and leases only).
    Example: ``(await outbox_status(database, scope=connection.topic_prefix)).backlog``
    """
    now = time.time()
    where = {"c": scope}
    async with database.begin() as conn:
        backlog, oldest = (
            await conn.execute(text("SELECT count(*), min(created_at) FROM eventbus_outbox WHERE scope = :c"), where)
        ).one()
        parked = (
            await conn.execute(text("SELECT count(*) FROM eventbus_outbox_parked WHERE scope = :c"), where)
        ).scalar_one()
        relays = [
            {
                "owner": row.owner,
                "slots": row.slots_owned,
                "seen_s_ago": round(now - row.seen_at, 1),
                "alive": now - row.seen_at <= lease_s,
                "sent": row.sent,
                "parked": row.parked,
                "errors": row.errors,
                "rate": row.rate,
            }
            for row in await conn.execute(
                text("SELECT * FROM eventbus_outbox_relays WHERE scope = :c ORDER BY owner"), where
            )
        ]
        leases = [
            {"slot": row.slot, "owner": row.owner or None, "expires_in_s": round(max(0.0, row.expires_at - now), 1)}
            for row in await conn.execute(
                text("SELECT * FROM eventbus_outbox_leases WHERE scope = :c ORDER BY slot"), where
            )
        ]
    age = max(0.0, now - oldest) if oldest is not None else 0.0
    return OutboxStatus(int(backlog), age, int(parked), relays, leases)


class _RelayCollector:
    """``eventbus_outbox_*`` from a relay's stats, read on each scrape."""

    def __init__(self, relay: OutboxRelay) -> None:
        self._relay = relay

    def collect(self) -> Iterator[Metric]:
        stats = self._relay.stats
        counts: tuple[tuple[str, str, int], ...] = (
            ("eventbus_outbox_published", "Outbox rows published", stats.sent),
            ("eventbus_outbox_parked", "Outbox rows set aside as unpublishable", stats.parked),
            ("eventbus_outbox_errors", "Failed outbox publish attempts", stats.errors),
        )
        for name, doc, count in counts:
            counter = CounterMetricFamily(name, doc)
            counter.add_metric([], float(count))
            yield counter
        for name, doc, value in (
            ("eventbus_outbox_backlog", "Outbox rows not sent yet", float(stats.backlog)),
            ("eventbus_outbox_oldest_age_seconds", "Age of the oldest unsent outbox row", stats.oldest_age_s),
            ("eventbus_outbox_slots_owned", "Slots this relay works", float(stats.slots_owned)),
        ):
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], value)
            yield gauge
