"""The outbox and its relay on SQLite and the in-memory broker: fast checks of order, parking, sharing, status.

The same behaviours run on PostgreSQL, the embedded broker and Apache Kafka in ``tests/integration/test_outbox.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from consumers import OUTBOX_MIGRATION, Database, OutboxRelay, RelayConfig, outbox_status
from consumers.testing import InMemoryBroker
from infra._cli import main
from producers import OUTBOX_BUCKETS, EventPublisher, KafkaConnection, Outbox, bucket_of
from schemas import CoachRatingUpdated, SessionUpdated
from schemas.errors import EventValidationError, MessageTooLargeError, StorageError
from tests.harness import new_broker, until


def change(session: str, n: int) -> SessionUpdated:
    return SessionUpdated(session_id=session, coach_id="c-1", user_id="u-1", changed_fields=[f"field-{n}"])


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    value = Database(f"sqlite:///{tmp_path}/outbox.sqlite")
    await value.migrate([OUTBOX_MIGRATION])
    try:
        yield value
    finally:
        await value.close()


@asynccontextmanager
async def relaying(database: Database, broker: InMemoryBroker, **config: object) -> AsyncIterator[OutboxRelay]:
    async with EventPublisher(transport=broker.producer()) as publisher:
        relay = OutboxRelay(database, publisher=publisher, config=RelayConfig(poll_interval_s=0.02, **config))
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        try:
            yield relay
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)


async def backlog(database: Database) -> int:
    return (await outbox_status(database)).backlog


async def empty(database: Database) -> bool:
    return await backlog(database) == 0


def test_keys_hash_into_the_buckets_like_kafka_partitions() -> None:
    assert {bucket_of(f"s-{n}".encode()) for n in range(2000)} == set(range(OUTBOX_BUCKETS))
    assert bucket_of(b"s-1") == bucket_of(b"s-1")
    assert bucket_of(None) == 0


async def test_bad_events_raise_before_anything_is_written(database: Database) -> None:
    outbox = Outbox()
    with pytest.raises(EventValidationError, match="session_id"):
        async with database.begin() as conn:
            await outbox.publish(conn, "session:updated", {"coach_id": "c", "user_id": "u"})
    small = Outbox(
        connection=KafkaConnection(), config=EventPublisher().config.model_copy(update={"max_message_bytes": 64})
    )
    with pytest.raises(MessageTooLargeError):
        async with database.begin() as conn:
            await small.add(conn, change("s-1", 1))
    assert await backlog(database) == 0


async def test_the_relay_sends_each_keys_events_in_insertion_order_and_empties_the_outbox(database: Database) -> None:
    broker = new_broker()
    outbox = Outbox()
    written = [change(f"s-{n % 7}", n) for n in range(300)]
    for start in range(0, 300, 25):
        async with database.begin() as conn:
            await outbox.add_many(conn, written[start : start + 25])
    async with relaying(database, broker) as relay:
        await until(lambda: empty(database), "the outbox emptied")
    stored = broker.records("session")
    assert relay.stats.sent == 300
    assert sorted(str(r.key) for r in stored) == sorted(str(e.session_id.encode()) for e in written)
    for key in {e.session_id for e in written}:
        sent = [dict(r.headers)["event-id"].decode() for r in stored if r.key == key.encode()]
        assert sent == [str(e.event_id) for e in written if e.session_id == key]


async def test_a_row_for_a_topic_the_broker_lacks_is_parked_with_its_error_and_the_key_goes_on(
    database: Database,
) -> None:
    broker = InMemoryBroker()
    broker.create_topic("coach", 3)  # no session topic
    outbox = Outbox()
    rating = CoachRatingUpdated(coach_id="c-1", new_rating=4.5, review_count=3)
    async with database.begin() as conn:
        await outbox.add_many(conn, [change("s-1", 1), rating])
    async with relaying(database, broker) as relay:
        await until(lambda: empty(database), "the outbox emptied")
    async with database.begin() as conn:
        parked = (await conn.execute(text("SELECT event_type, error FROM eventbus_outbox_parked"))).all()
    assert relay.stats.parked == 1
    assert [(row.event_type, "UnknownTopicError" in row.error) for row in parked] == [("session:updated", True)]
    assert [dict(r.headers)["event-type"] for r in broker.records("coach")] == [b"coach:rating_updated"]


async def test_a_relay_leaves_the_rows_of_another_topic_prefix_alone(database: Database) -> None:
    broker = new_broker()
    other = Outbox(connection=KafkaConnection(topic_prefix="other."))
    async with database.begin() as conn:
        await other.add(conn, change("s-1", 1))
        await Outbox().add(conn, change("s-2", 2))
    async with relaying(database, broker) as relay:
        await until(lambda: empty(database), "this deployment's outbox emptied")
    assert (relay.stats.sent, relay.stats.parked) == (1, 0)
    assert (await outbox_status(database, scope="other.")).backlog == 1


async def test_two_relays_share_the_slots_and_the_survivor_takes_them_all(database: Database) -> None:
    broker = new_broker()
    async with relaying(database, broker, slots=4, lease_s=0.6) as first:
        async with relaying(database, broker, slots=4, lease_s=0.6) as second:

            async def shared() -> bool:
                return first.stats.slots_owned == 2 and second.stats.slots_owned == 2

            await until(shared, "two slots each", timeout_s=15)
        await until(lambda: first.stats.slots_owned == 4, "the survivor with every slot", timeout_s=15)
        async with database.begin() as conn:
            await Outbox().add(conn, change("s-after", 1))
        await until(lambda: empty(database), "the outbox emptied by the survivor")


async def test_relays_of_one_scope_must_agree_on_the_slot_count(database: Database) -> None:
    broker = new_broker()
    async with relaying(database, broker, slots=4):
        pass
    async with EventPublisher(transport=broker.producer()) as publisher:
        relay = OutboxRelay(database, publisher=publisher, config=RelayConfig(slots=8))
        with pytest.raises(StorageError, match="use 4 slots, this one 8"):
            await relay.run(asyncio.Event())


def test_outbox_status_shows_backlog_and_parked_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/status.sqlite"

    async def seed() -> None:
        database = Database(url)
        await database.migrate([OUTBOX_MIGRATION])
        async with database.begin() as conn:
            await Outbox().add_many(conn, [change("s-1", 1), change("s-2", 2)])
            await conn.execute(
                text(
                    "INSERT INTO eventbus_outbox_parked (id, scope, bucket, event_id, event_type, topic, record_key,"
                    " record_value, headers, created_at, error, parked_at)"
                    " VALUES (99, '', 0, 'e', 'session:updated', 'session', NULL, X'00', '[]', 0, 'boom', :t)"
                ),
                {"t": datetime.now(UTC).timestamp()},
            )
        await database.close()

    asyncio.run(seed())
    result = CliRunner().invoke(main, ["outbox", "status", "--json"], env={"EVENTBUS_DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert (found["backlog"], found["parked"], found["relays"]) == (2, 1, [])
    assert found["oldest_age_s"] >= 0
    table = CliRunner().invoke(main, ["outbox", "status"], env={"EVENTBUS_DATABASE_URL": url})
    assert "backlog 2" in table.stdout
