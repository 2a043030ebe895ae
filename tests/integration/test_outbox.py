"""The transactional outbox on real databases and real brokers: what commits is sent, in order, once.

The records are read back by an independent client (confluent-kafka, ``read_committed``), never by the code
under test. Each test has a database of its own (a new SQLite file, or a new database on the shared
PostgreSQL server): a relay sends every row of its database, so tests must not share one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from sqlalchemy import text

from consumers import (
    OUTBOX_MIGRATION,
    PROCESSED_EVENTS_MIGRATION,
    Database,
    GroupSettings,
    MemoryCache,
    OutboxRelay,
    ProcessedEventStore,
    RelayConfig,
    Resources,
    outbox_status,
    run_groups,
)
from consumers.groups import credits as credit
from infra._settings import Settings
from infra._topics import TOPIC_SPECS, apply_topics
from producers import EventPublisher, Outbox
from schemas import Event, SessionCompleted, SessionCreated, SessionUpdated
from tests.conftest import KafkaTarget, make_settings
from tests.harness import POSTGRES_URL, until
from tests.private_postgres import PrivatePostgres

pytestmark = [pytest.mark.integration]

PARTITIONS = {spec.name: spec.partitions for spec in TOPIC_SPECS}


@asynccontextmanager
async def own_database(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """A database of this test only: a SQLite file, or a new database on the shared PostgreSQL server."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path}/outbox.sqlite"
        return
    name = f"outbox_{uuid.uuid4().hex[:12]}"
    server = POSTGRES_URL.rsplit("/", 1)[0]
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"{server}/{name}"
    finally:
        admin = await asyncpg.connect(POSTGRES_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@dataclass(frozen=True)
class Read:
    """One record as an independent reader saw it."""

    event_id: str
    key: str
    topic: str
    partition: int
    offset: int


def read_committed(bootstrap: str, topics: list[str], expected: int, timeout_s: float = 60.0) -> list[Read]:
    """Every committed record of ``topics`` (confluent-kafka, read_committed), once ``expected`` are there."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        assignment = [
            TopicPartition(topic, partition, OFFSET_BEGINNING)
            for topic in topics
            for partition in range(PARTITIONS[topic.rsplit(".", 1)[-1]])
        ]
        consumer.assign(assignment)
        found: list[Read] = []
        deadline = time.monotonic() + timeout_s
        quiet_until = 0.0
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                if len(found) >= expected and time.monotonic() > quiet_until:
                    break
                continue
            if message.error():
                continue
            headers = dict(message.headers() or [])
            key = message.key()
            found.append(
                Read(
                    _text(headers["event-id"]),
                    _text(key),
                    str(message.topic()),
                    int(message.partition() or 0),
                    int(message.offset() or 0),
                )
            )
            if len(found) >= expected:
                quiet_until = time.monotonic() + 2.0  # any duplicate would arrive within this
        return found
    finally:
        consumer.close()


def _text(value: str | bytes | None) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def booking(session: str, user: str, n: int = 0) -> SessionCreated:
    return SessionCreated(
        session_id=session,
        user_id=user,
        coach_id="coach-1",
        session_type="Mentoría Individual",
        scheduled_at=datetime(2100, 1, 1, n % 24, tzinfo=UTC),
        cost_credits=1,
    )


@asynccontextmanager
async def running_relay(database: Database, settings: Settings, **config: object) -> AsyncIterator[OutboxRelay]:
    relay_config = settings.relay_config().model_copy(update={"poll_interval_s": 0.1, **config})
    relay = OutboxRelay(
        database,
        connection=settings.connection(),
        publisher_config=settings.publisher_config(service="relay-test"),
        config=relay_config,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield relay
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


async def backlog(database: Database, scope: str) -> int:
    return (await outbox_status(database, scope=scope)).backlog


@pytest.mark.parametrize("db_kind", ["sqlite", "postgresql"])
async def test_rollback_sends_nothing_and_commit_sends_exactly_that_transactions_events_in_order(
    kafka_target: KafkaTarget, db_kind: str, tmp_path: Path
) -> None:
    settings = make_settings(kafka_target)
    await apply_topics(settings.connection(), replication_factor=1)
    outbox = Outbox(connection=settings.connection(), config=settings.publisher_config(service="booking"))
    async with own_database(db_kind, tmp_path) as url:
        database = Database(url)
        await database.migrate([OUTBOX_MIGRATION])
        try:
            await _book_and_fail(database, outbox)
            kept: list[Event] = [booking("s-1", "u1", 1)]
            async with database.begin() as conn:
                await outbox.add(conn, kept[0])
                for changed in ("scheduled_at", "session_type"):
                    event = SessionUpdated(session_id="s-1", user_id="u1", coach_id="coach-1", changed_fields=[changed])
                    kept.append(event)
                    await outbox.add(conn, event)
                created = await outbox.publish(
                    conn,
                    "session:created",
                    {
                        "session_id": "s-2",
                        "user_id": "u2",
                        "coach_id": "coach-1",
                        "session_type": "Revisión de CV",
                        "scheduled_at": "2100-01-02T10:00:00Z",
                        "cost_credits": 2,
                    },
                )
                kept.append(created)
            assert await backlog(database, settings.connection().topic_prefix) == 4, (
                "nothing is sent while no relay runs"
            )
            async with running_relay(database, settings):
                await until(
                    lambda: _is_zero(backlog(database, settings.connection().topic_prefix)),
                    "the relay to empty the outbox",
                    timeout_s=30,
                )
            reads = await asyncio.to_thread(
                read_committed, settings.bootstrap_servers or "", [settings.connection().topic("session")], 4
            )
        finally:
            await database.close()
    assert Counter(read.event_id for read in reads) == Counter(str(event.event_id) for event in kept)
    by_key = defaultdict(list)
    for read in sorted(reads, key=lambda r: (r.partition, r.offset)):
        by_key[read.key].append(read.event_id)
    assert by_key["s-1"] == [str(event.event_id) for event in kept[:3]], "one key's events in commit order"


async def _is_zero(value: Awaitable[int]) -> bool:
    return await value == 0


async def _book_and_fail(database: Database, outbox: Outbox) -> None:
    """A booking transaction that adds its event, then fails: rolled back."""
    with pytest.raises(RuntimeError, match="the booking failed"):  # noqa: PT012 - the whole transaction
        async with database.begin() as conn:
            await outbox.add(conn, booking("rolled-back", "u1"))
            raise RuntimeError("the booking failed")


async def test_a_row_the_broker_cannot_take_is_parked_with_its_error_and_its_key_goes_on(
    kafka_target: KafkaTarget, tmp_path: Path
) -> None:
    settings = make_settings(kafka_target)
    await apply_topics(settings.connection(), replication_factor=1)
    outbox = Outbox(connection=settings.connection(), config=settings.publisher_config(service="booking"))
    database = Database(f"sqlite:///{tmp_path}/outbox.sqlite")
    await database.migrate([OUTBOX_MIGRATION])
    big = booking("s-big", "u1").model_copy(update={"session_type": "x" * 3000})
    after = SessionUpdated(session_id="s-big", user_id="u1", coach_id="coach-1", changed_fields=["session_type"])
    try:
        async with database.begin() as conn:
            await outbox.add(conn, big)
            await outbox.add(conn, after)
        small = settings.publisher_config(service="relay-test").model_copy(update={"max_message_bytes": 1024})
        relay = OutboxRelay(
            database,
            connection=settings.connection(),
            publisher_config=small,
            config=RelayConfig(poll_interval_s=0.1, slots=2),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        try:
            await until(
                lambda: _is_zero(backlog(database, settings.connection().topic_prefix)),
                "the outbox to empty",
                timeout_s=30,
            )
        finally:
            stop.set()
            await task
        status = await outbox_status(database, scope=settings.connection().topic_prefix)
        async with database.begin() as conn:
            parked = (await conn.execute(text("SELECT event_id, error FROM eventbus_outbox_parked"))).all()
        reads = await asyncio.to_thread(
            read_committed, settings.bootstrap_servers or "", [settings.connection().topic("session")], 1
        )
    finally:
        await database.close()
    assert status.parked == 1
    assert [row.event_id for row in parked] == [str(big.event_id)]
    assert "MessageTooLargeError" in parked[0].error
    assert "1024" in parked[0].error
    assert [read.event_id for read in reads] == [str(after.event_id)], "the key goes on after its poison row"
    assert relay.stats.parked == 1


# -- many writers, relays killed and competing --------------------------------------------------------

WRITERS = 8
EVENTS = 20_000
KILLS = 5


def _relay_process(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-c", "from infra._cli import main; main()", "relay", "--log-level", "WARNING"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _write(database: Database, outbox: Outbox, writer: int, count: int) -> list[tuple[str, str]]:
    """``count`` completions of this writer's own sessions, in transactions of 1 to 20: (key, event id)."""
    written: list[tuple[str, str]] = []
    n = 0
    while n < count:
        size = min(count - n, 1 + (n * 7 + writer) % 20)
        events = [
            SessionCompleted(
                session_id=f"w{writer}-s{(n + i) % 50}",
                coach_id="coach-1",
                user_id=f"u{writer}",
                cost_credits=1,
                completed_at=datetime(2100, 1, 1, tzinfo=UTC),
            )
            for i in range(size)
        ]
        async with database.begin() as conn:
            await outbox.add_many(conn, events)
        written.extend((event.session_id, str(event.event_id)) for event in events)
        n += size
        await asyncio.sleep(0.08)  # about 20 s of writing: every kill (one each 3 s) falls while rows come in
    return written


async def _ledger(database: Database) -> Counter[str]:
    """Deductions per completion event id (the ledger's entry id)."""
    async with database.begin() as conn:
        rows = await conn.execute(text("SELECT entry_id FROM credits_ledger WHERE reason = 'session_completed'"))
        return Counter(str(row[0]) for row in rows)


@asynccontextmanager
async def credits_group(database: Database, settings: Settings) -> AsyncIterator[None]:
    """The credits group running on ``settings``'s topics, each user granted enough credits."""
    resources = Resources(database=database, cache=MemoryCache(), settings=GroupSettings())
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_groups(
            [credit.build(resources)],
            connection=settings.connection(),
            publisher_config=settings.publisher_config("credits-test"),
            consumer_config=settings.consumer_config(),
            runtime_config=settings.runtime_config(commit_interval_s=0.2, concurrency=4),
            stop=stop,
            store=ProcessedEventStore(database),
            started=started,
        )
    )
    try:
        await asyncio.wait_for(started.wait(), timeout=60)
        async with EventPublisher(connection=settings.connection(), config=settings.publisher_config("t")) as pub:
            for writer in range(WRITERS):
                await credit.grant_credits(database, pub, f"u{writer}", EVENTS)
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


@pytest.mark.timeout(600)
async def test_twenty_thousand_events_from_eight_writers_survive_relays_killed_five_times_while_two_compete(  # noqa: PLR0915
    kafka_target: KafkaTarget, tmp_path: Path
) -> None:
    settings = make_settings(kafka_target)
    await apply_topics(settings.connection(), replication_factor=1)
    outbox = Outbox(connection=settings.connection(), config=settings.publisher_config(service="booking"))
    topic = settings.connection().topic("session")
    embedded = kafka_target.profile == "embedded"  # at least once: the credits group must apply each once
    async with own_database("postgresql", tmp_path) as url:
        database = Database(url)
        await database.migrate([OUTBOX_MIGRATION, PROCESSED_EVENTS_MIGRATION, *credit.MIGRATIONS])
        env = {
            **os.environ,
            "EVENTBUS_DATABASE_URL": url,
            "EVENTBUS_BOOTSTRAP_SERVERS": settings.bootstrap_servers or "",
            "EVENTBUS_PROFILE": settings.profile,
            "EVENTBUS_TOPIC_PREFIX": settings.topic_prefix or "",
            "EVENTBUS_OUTBOX_LEASE_S": "2",
            "EVENTBUS_OUTBOX_POLL_INTERVAL_S": "0.2",
            "EVENTBUS_OUTBOX_BATCH_SIZE": "200",
        }
        logs = [tmp_path / "relay-0.log", tmp_path / "relay-1.log"]
        async with AsyncExitStack() as stack:
            if embedded:
                await stack.enter_async_context(credits_group(database, settings))
            relays = [_relay_process(env, log) for log in logs]
            try:
                writing = asyncio.gather(
                    *(_write(database, outbox, writer, EVENTS // WRITERS) for writer in range(WRITERS))
                )
                killed_while_writing = 0
                working_together = 0
                for kill in range(KILLS):
                    await asyncio.sleep(3.0)  # a relay takes a second or two to start on a busy machine
                    now = await outbox_status(database, scope=settings.connection().topic_prefix, lease_s=2.0)
                    holders = {lease["owner"] for lease in now.leases if lease["owner"] and lease["expires_in_s"] > 0}
                    working_together = max(working_together, len(holders))
                    victim = kill % 2
                    relays[victim].send_signal(signal.SIGKILL)
                    relays[victim].wait(timeout=10)
                    killed_while_writing += not writing.done()
                    relays[victim] = _relay_process(env, logs[victim])
                written = [pair for part in await writing for pair in part]
                await until(
                    lambda: _is_zero(backlog(database, settings.connection().topic_prefix)),
                    "the relays to empty the outbox",
                    timeout_s=180,
                )
                status = await outbox_status(database, scope=settings.connection().topic_prefix)
                if embedded:

                    async def all_deducted() -> bool:
                        return len(await _ledger(database)) >= EVENTS

                    await until(all_deducted, "the credits group to deduct every completion", timeout_s=300)
                    ledger = await _ledger(database)
            finally:
                for process in relays:
                    process.send_signal(signal.SIGTERM)
                for process in relays:
                    try:
                        process.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        process.kill()
        await database.close()
    reads = await asyncio.to_thread(read_committed, settings.bootstrap_servers or "", [topic], EVENTS, 180.0)
    assert len(written) == EVENTS
    assert killed_while_writing == KILLS, "every kill fell while events were being written"
    assert working_together == 2, "both relays held slots at once"
    assert status.parked == 0
    counts = Counter(read.event_id for read in reads)
    assert set(counts) == {event_id for _, event_id in written}, "every committed event is in the log"
    if embedded:
        assert set(ledger) == set(counts), "every completion deducted"
        assert set(ledger.values()) == {1}, "each completion deducted once, duplicates in the log or not"
    else:
        duplicated = {event_id: n for event_id, n in counts.items() if n > 1}
        assert not duplicated, f"{len(duplicated)} events twice in the log on Apache Kafka"
    # per key: the first time each event appears follows the order it was written in
    order: dict[str, list[str]] = defaultdict(list)
    for key, event_id in written:
        order[key].append(event_id)
    seen: dict[str, list[str]] = defaultdict(list)
    first: set[str] = set()
    for read in sorted(reads, key=lambda r: (r.partition, r.offset)):
        if read.event_id not in first:
            first.add(read.event_id)
            seen[read.key].append(read.event_id)
    assert seen == order, "per-key order kept"


# -- PostgreSQL restarted under the relay --------------------------------------------------------------


async def test_postgresql_restarted_under_the_relay_it_resumes_and_nothing_is_lost(
    kafka_target: KafkaTarget, private_postgres: PrivatePostgres
) -> None:
    server = private_postgres
    settings = make_settings(kafka_target)
    await apply_topics(settings.connection(), replication_factor=1)
    outbox = Outbox(connection=settings.connection(), config=settings.publisher_config(service="booking"))
    database = Database(server.url)
    await database.migrate([OUTBOX_MIGRATION])
    written: list[str] = []

    async def write(count: int) -> None:
        for n in range(count):
            event = booking(f"pg-{len(written)}", "u1", n)
            async with database.begin() as conn:
                await outbox.add(conn, event)
            written.append(str(event.event_id))

    try:
        async with running_relay(database, settings, lease_s=3.0):
            await write(300)
            await asyncio.to_thread(server.restart, 1.0)
            for _ in range(100):  # the writer's own pool reconnects too
                try:
                    await write(1)
                    break
                except Exception:  # noqa: BLE001 - the first tries meet the restart
                    await asyncio.sleep(0.2)
            await write(300)
            await until(
                lambda: _is_zero(backlog(database, settings.connection().topic_prefix)),
                "the relay to empty the outbox",
                timeout_s=60,
            )
    finally:
        await database.close()
    reads = await asyncio.to_thread(
        read_committed, settings.bootstrap_servers or "", [settings.connection().topic("session")], len(written)
    )
    assert set(written) <= {read.event_id for read in reads}
