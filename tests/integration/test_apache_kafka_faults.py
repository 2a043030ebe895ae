"""Faults only real Apache Kafka can show, on the embedded engine (``infra._kafka_cluster``: JVMs on 127.0.0.1).

- A single node with a data dir restarted under a working group: the group resumes from its commits,
  nothing is lost and every effect happens once.
- Three nodes: 50 000 keyed events published with acks=all while the leader of a partition is SIGKILLed and
  restarted, the credits group consuming throughout; every acknowledged event is in the log exactly once and
  every balance is exact.
- Three nodes: a rolling restart of every broker while the main job (the five groups) runs: its own checks hold.

The logs are read back by independent confluent-kafka consumers, never by the code under test.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from sqlalchemy import text

from consumers import (
    PROCESSED_EVENTS_MIGRATION,
    ConsumerGroup,
    Database,
    GroupSettings,
    HandlerContext,
    MemoryCache,
    Migration,
    ProcessedEventStore,
    Resources,
    run_groups,
)
from consumers.groups import credits as credit
from infra._kafka_cluster import KafkaCluster
from infra._settings import Settings
from infra._topics import TOPIC_SPECS, apply_topics
from producers import EventPublisher
from schemas import AvroCodec, Event, SessionCompleted, SessionCreated
from tests.harness import POSTGRES_URL, until

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

PARTITIONS = {spec.name: spec.partitions for spec in TOPIC_SPECS}
EFFECTS = Migration(
    7_340_101,
    "kafka fault test effects",
    ["CREATE TABLE IF NOT EXISTS kafka_fault_effects (group_name VARCHAR(200), event_id VARCHAR(36))"],
)
CODEC = AvroCodec()
ROOT = Path(__file__).resolve().parents[2]


def fault_settings(bootstrap: str, replication: int) -> Settings:
    """The kafka profile (idempotent producer, long session timeout) with this test's own topics."""
    return Settings(
        bootstrap_servers=bootstrap,
        profile="kafka",
        topic_prefix=f"f{uuid.uuid4().hex[:10]}.",
        replication_factor=replication,
        connect_timeout_s=60.0,
        request_timeout_s=15.0,
        delivery_timeout_s=120.0,
        database_url=POSTGRES_URL,
    )


def read_event_ids(bootstrap: str, topic: str) -> Counter[str]:
    """Every event id in ``topic`` (read_committed, from the beginning to the end of each partition)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "unused",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        partitions = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS[topic.rsplit(".", 1)[1]])]
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=30)[1] for p in partitions}
        consumer.assign(partitions)
        found: Counter[str] = Counter()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for message in consumer.consume(10_000, timeout=0.5):
                value = message.value()
                if message.error() is None and value is not None:
                    found[str(CODEC.decode(value).event_id)] += 1
            positions = consumer.position([TopicPartition(topic, p) for p in ends])
            if all(ends[tp.partition] == 0 or tp.offset >= ends[tp.partition] for tp in positions):
                return found
        raise AssertionError(f"{topic} was not read to its end within 300 s")
    finally:
        consumer.close()


async def leader_of(settings: Settings, topic: str, partition: int) -> int:
    admin = AIOKafkaAdminClient(**settings.connection().client_options())
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return int(next(p["leader"] for p in described["partitions"] if p["partition"] == partition))
    finally:
        await admin.close()


# -- one node with a data dir, restarted ----------------------------------------------------------------


@pytest.mark.timeout(600)
async def test_a_group_resumes_from_its_commits_after_the_broker_restarts_nothing_lost_effects_once(
    tmp_path: Path,
) -> None:
    cluster = KafkaCluster(nodes=1, data_dir=tmp_path / "kafka")
    await asyncio.to_thread(cluster.start)
    database = Database(POSTGRES_URL)
    try:
        settings = fault_settings(cluster.bootstrap_servers, replication=1)
        await apply_topics(settings.connection(), replication_factor=1)
        await database.migrate([PROCESSED_EVENTS_MIGRATION, EFFECTS])
        group = ConsumerGroup(f"restart-{uuid.uuid4().hex[:10]}")
        calls: Counter[str] = Counter()

        @group.handler(SessionCreated)
        async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
            calls[str(event.event_id)] += 1
            async with ctx.effects() as tx:
                if tx.first_time:
                    await tx.execute(
                        "INSERT INTO kafka_fault_effects (group_name, event_id) VALUES (:g, :e)",
                        {"g": ctx.group, "e": str(event.event_id)},
                    )

        async def effects() -> Counter[str]:
            async with database.begin() as conn:
                rows = await conn.execute(
                    text("SELECT event_id FROM kafka_fault_effects WHERE group_name = :g"), {"g": group.name}
                )
                return Counter(row[0] for row in rows)

        before: list[Event] = [_booking(f"before-{n}") for n in range(1000)]
        after: list[Event] = [_booking(f"after-{n}") for n in range(1000)]
        stop = asyncio.Event()
        async with EventPublisher(connection=settings.connection(), config=settings.publisher_config("t")) as pub:
            await pub.publish_many(before)
            task = asyncio.create_task(
                run_groups(
                    [group],
                    connection=settings.connection(),
                    publisher_config=settings.publisher_config("restart"),
                    consumer_config=settings.consumer_config(),
                    runtime_config=settings.runtime_config(commit_interval_s=0.2, backoff_initial_s=0.05),
                    stop=stop,
                    store=ProcessedEventStore(database),
                )
            )
            try:
                await until(lambda: len(calls) >= 300 or task.done(), "the group under way", timeout_s=120)
                await asyncio.to_thread(cluster.stop)
                await asyncio.sleep(2)
                await asyncio.to_thread(cluster.start)
                await pub.publish_many(after)
                wanted = {str(e.event_id) for e in before + after}
                await until(lambda: _done(task) or _covers(effects(), wanted), "every event applied", timeout_s=300)
            finally:
                stop.set()
                await asyncio.wait_for(task, timeout=120)
        applied = await effects()
        assert set(applied) == wanted, "an event was lost"
        assert max(applied.values()) == 1, "an effect was applied twice"
        assert set(calls) == wanted
    finally:
        await database.close()
        await asyncio.to_thread(cluster.stop)


def _done(task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()  # a group that stopped raises its error here
        raise AssertionError("the group stopped")
    return False


async def _covers(found: object, wanted: set[str]) -> bool:
    assert asyncio.iscoroutine(found)
    return set(await found) >= wanted


def _booking(session_id: str) -> SessionCreated:
    return SessionCreated(
        session_id=session_id,
        coach_id="coach-fault",
        user_id=f"user-{session_id}",
        scheduled_at=datetime(2100, 1, 1, tzinfo=UTC),
        session_type="video-call",
        cost_credits=1,
    )


# -- three nodes ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_brokers() -> Iterator[KafkaCluster]:
    """Three combined nodes: replication 3, min.insync.replicas 2."""
    cluster = KafkaCluster(nodes=3, heap_mb=384)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def credits_database() -> AsyncIterator[Database]:
    database = Database(POSTGRES_URL)
    await database.migrate([PROCESSED_EVENTS_MIGRATION, *credit.MIGRATIONS])
    try:
        yield database
    finally:
        await database.close()


@pytest.mark.timeout(900)
async def test_a_killed_partition_leader_loses_no_acknowledged_event_and_balances_stay_exact(
    three_brokers: KafkaCluster, credits_database: Database
) -> None:
    cluster = three_brokers
    settings = fault_settings(cluster.bootstrap_servers, replication=3)
    await apply_topics(settings.connection(), replication_factor=3)
    run = uuid.uuid4().hex[:8]
    users = [f"user-{run}-{n}" for n in range(250)]
    total, grant = 50_000, 1_000
    async with EventPublisher(connection=settings.connection(), config=settings.publisher_config("t")) as publisher:
        for user in users:
            await credit.grant_credits(credits_database, publisher, user, grant)
    completions: list[Event] = [
        SessionCompleted(
            session_id=f"session-{run}-{n}",
            coach_id="coach-fault",
            user_id=users[n % len(users)],
            cost_credits=1 + n % 3,
            completed_at=datetime(2100, 1, 1, tzinfo=UTC),
        )
        for n in range(total)
    ]
    topic = settings.connection().topic("session")
    victim = await leader_of(settings, topic, 0)
    stop = asyncio.Event()
    consuming = asyncio.create_task(
        run_groups(
            [credit.build(_resources(credits_database))],
            connection=settings.connection(),
            publisher_config=settings.publisher_config("credits"),
            consumer_config=settings.consumer_config(),
            runtime_config=settings.runtime_config(backoff_initial_s=0.05, concurrency=6),
            stop=stop,
            store=ProcessedEventStore(credits_database),
        )
    )
    acknowledged: set[str] = set()
    failed: set[str] = set()
    try:
        async with EventPublisher(connection=settings.connection(), config=settings.publisher_config("t")) as pub:
            chunk = 500
            for start in range(0, total, chunk):
                if start == 10_000:
                    await asyncio.to_thread(cluster.stop_node, victim, kill=True)
                if start == 25_000:
                    await asyncio.to_thread(cluster.start_node, victim)
                batch = completions[start : start + chunk]
                results = await asyncio.gather(*(pub.publish(e) for e in batch), return_exceptions=True)
                for event, result in zip(batch, results, strict=True):
                    (failed if isinstance(result, BaseException) else acknowledged).add(str(event.event_id))
                await asyncio.sleep(0.05)
        assert cluster.node_running(victim)
        in_log = await asyncio.to_thread(read_event_ids, cluster.bootstrap_servers, topic)
        missing = acknowledged - set(in_log)
        duplicated = {event_id for event_id, count in in_log.items() if count > 1}
        assert (len(missing), len(duplicated)) == (0, 0), f"missing {len(missing)}, duplicated {len(duplicated)}"
        assert not failed, f"{len(failed)} publishes failed (each one is at most once in the log)"
        expected = Counter[str]()
        for event in completions:
            assert isinstance(event, SessionCompleted)
            expected[event.user_id] += event.cost_credits

        async def balances_exact() -> bool:
            _done(consuming)
            return all([await credit.get_balance(credits_database, u) == grant - expected[u] for u in users])

        await until(balances_exact, "every balance exact", timeout_s=600, interval_s=2.0)
    finally:
        stop.set()
        await asyncio.wait_for(consuming, timeout=120)


def _resources(database: Database) -> Resources:
    return Resources(database=database, cache=MemoryCache(), settings=GroupSettings())


@pytest.mark.timeout(900)
def test_the_main_job_holds_its_checks_through_a_rolling_restart_of_three_brokers(
    three_brokers: KafkaCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """``eventbus demo`` (the five groups and a live marketplace) on the three nodes while each is restarted."""
    cluster = three_brokers
    env = {
        **os.environ,
        "EVENTBUS_BOOTSTRAP_SERVERS": cluster.bootstrap_servers,
        "EVENTBUS_PROFILE": "kafka",
        "EVENTBUS_DATABASE_URL": POSTGRES_URL,
        "EVENTBUS_TOPIC_PREFIX": f"r{uuid.uuid4().hex[:8]}.",
        "EVENTBUS_CONNECT_TIMEOUT_S": "60",
        "EVENTBUS_DELIVERY_TIMEOUT_S": "120",
    }
    command = [sys.executable, "-c", "from infra._cli import main; main()", "demo", "--duration", "90", "--no-live"]
    demo = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(20)
        for node_id in cluster.node_ids:
            cluster.stop_node(node_id)
            time.sleep(3)
            cluster.start_node(node_id)
            time.sleep(5)
        output, _ = demo.communicate(timeout=600)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    logging.getLogger(__name__).info("demo output:\n%s", output)
    assert demo.returncode == 0, output[-4000:]
    noisy = [line for line in output.splitlines() if "Traceback" in line]
    assert not noisy, output[-4000:]
    assert len(output.splitlines()) < 2_000, "an unbounded error loop"
