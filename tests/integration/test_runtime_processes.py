"""Real ``eventbus run`` processes against the embedded broker and PostgreSQL: kill -9, SIGTERM, members joining
and leaving. The app (tests/integration/runtime_app.py) records each event once in a table (effects once) and
logs every raw delivery to a file; tests wait on those, never on fixed sleeps.

The embedded profile's session timeout is 6 s: a killed or departed member's partitions move on only after it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

import pytest
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import text

from consumers import Database
from infra._settings import Settings
from producers import EventPublisher
from tests.events_factory import example_event
from tests.harness import POSTGRES_URL
from tests.integration.runtime_app import TABLE_DDL
from tests.runtime_contract import until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SESSION_PARTITIONS = 6
SHUTDOWN_TIMEOUT_S = 5.0


@dataclass
class Member:
    """One ``eventbus run`` process; its stderr (text logs) goes to a file."""

    process: subprocess.Popen[bytes]
    output: Path

    def log(self) -> str:
        return self.output.read_text(encoding="utf-8", errors="replace")

    def assigned(self) -> bool:
        return "partitions assigned" in self.log()

    async def exit_code(self, timeout_s: float) -> int:
        await until(lambda: self.process.poll() is not None, f"pid {self.process.pid} to exit", timeout_s)
        return self.process.wait()


@dataclass
class Cluster:
    """The processes of one group, its table rows and delivery log."""

    settings: Settings
    database: Database
    group: str
    tmp_path: Path
    delay_s: float
    members: list[Member] = field(default_factory=list)

    @property
    def deliveries_log(self) -> Path:
        return self.tmp_path / "deliveries.log"

    def start(self) -> Member:
        env = {name: value for name, value in os.environ.items() if not name.startswith("EVENTBUS_")}
        env |= {
            "EVENTBUS_BOOTSTRAP_SERVERS": self.settings.connection().bootstrap_servers,
            "EVENTBUS_PROFILE": "embedded",
            "EVENTBUS_TOPIC_PREFIX": self.settings.connection().topic_prefix,
            "EVENTBUS_DATABASE_URL": POSTGRES_URL,
            "EVENTBUS_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S),
            "EVENTBUS_TEST_GROUP": self.group,
            "EVENTBUS_TEST_LOG": str(self.deliveries_log),
            "EVENTBUS_TEST_DELAY_S": str(self.delay_s),
        }
        output = self.tmp_path / f"member-{len(self.members)}.log"
        command = [sys.executable, "-c", "from infra._cli import main; main()", "run", self.group]
        command += ["--app", "tests.integration.runtime_app:REGISTRY", "--log-format", "text"]
        with output.open("wb") as stderr:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        member = Member(process, output)
        self.members.append(member)
        return member

    async def rows(self) -> list[tuple[str, int, int]]:
        """(event id, partition, offset) of every row the group's handler wrote."""
        async with self.database.begin() as conn:
            result = await conn.execute(
                text("SELECT event_id, partition_no, offset_no FROM runtime_process_events WHERE group_name = :g"),
                {"g": self.group},
            )
            return [(row[0], row[1], row[2]) for row in result]

    async def count(self) -> int:
        async with self.database.begin() as conn:
            result = await conn.execute(
                text("SELECT count(*) FROM runtime_process_events WHERE group_name = :g"), {"g": self.group}
            )
            return int(result.scalar_one())

    async def count_reaches(self, wanted: int) -> bool:
        return await self.count() >= wanted

    def raw_deliveries(self) -> list[str]:
        if not self.deliveries_log.exists():
            return []
        return [line.split()[0] for line in self.deliveries_log.read_text(encoding="utf-8").splitlines() if line]

    async def publish(self, count: int) -> set[str]:
        """``count`` session:created events over 60 keys (every partition); their event ids."""
        events = [example_event("session:created", session_id=f"s-{i % 60}", cost_credits=i) for i in range(count)]
        async with EventPublisher(
            connection=self.settings.connection(), config=self.settings.publisher_config("runtime-test")
        ) as publisher:
            await publisher.publish_many(events)
        return {str(event.event_id) for event in events}

    async def committed(self) -> dict[int, int | None]:
        """The group's committed offset of each session partition, read with an admin client."""
        connection = self.settings.connection()
        admin = AIOKafkaAdminClient(**connection.client_options())
        await admin.start()
        try:
            asked = [KafkaTopicPartition(connection.topic("session"), p) for p in range(SESSION_PARTITIONS)]
            group_id = f"{connection.topic_prefix}{self.group}"
            found = await asyncio.wait_for(admin.list_consumer_group_offsets(group_id, partitions=asked), 10)
        finally:
            await admin.close()
        offsets = {tp.partition: meta.offset for tp, meta in found.items()}
        return {p: offsets[p] if offsets.get(p, -1) >= 0 else None for p in range(SESSION_PARTITIONS)}

    def kill_all(self) -> list[Member]:
        """Kill the members still running (returned) and reap every process."""
        running = [member for member in self.members if member.process.poll() is None]
        for member in running:
            member.process.kill()
        for member in self.members:
            member.process.wait()
        return running


def make_cluster(settings: Settings, database: Database, tmp_path: Path, delay_s: float) -> Cluster:
    return Cluster(settings, database, f"proc-{uuid4().hex[:10]}", tmp_path, delay_s)


@pytest.fixture
async def database() -> AsyncIterator[Database]:
    database = Database(POSTGRES_URL)
    try:
        async with database.begin() as conn:
            await conn.execute(text(TABLE_DDL))
        yield database
    finally:
        await database.close()


@pytest.fixture
async def clusters() -> AsyncIterator[list[Cluster]]:
    """Clusters whose processes are killed at teardown if a test left any running."""
    made: list[Cluster] = []
    yield made
    leftovers = [member for cluster in made for member in cluster.kill_all()]
    assert not leftovers, f"{len(leftovers)} processes were still running after the test"


def assert_every_event_once(rows: list[tuple[str, int, int]], published: set[str]) -> None:
    """Effects once: exactly one row per published event, none missing, none extra."""
    ids = [event_id for event_id, _, _ in rows]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} effects applied twice"
    missing = published - set(ids)
    assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:3]}"
    assert set(ids) == published


@pytest.mark.timeout(180)
async def test_sigkill_mid_batch_then_restart_handles_every_event_once(
    settings: Settings, database: Database, clusters: list[Cluster], tmp_path: Path
) -> None:
    """Invariants 1, 4 and 9: kill -9 after ~500 of 2 000 events; the restarted member redelivers what was not
    committed (raw deliveries >= 2 000) and the table still holds each event exactly once."""
    cluster = make_cluster(settings, database, tmp_path, delay_s=0.002)
    clusters.append(cluster)
    published = await cluster.publish(2000)
    first = cluster.start()
    await until(lambda: cluster.count_reaches(500), "about 500 events handled", timeout_s=60)
    first.process.send_signal(signal.SIGKILL)
    assert await first.exit_code(10) == -signal.SIGKILL
    handled_before_kill = await cluster.count()
    assert handled_before_kill < 2000, "the first member finished before it was killed"
    second = cluster.start()
    await until(lambda: cluster.count_reaches(2000), "all 2 000 events handled after the restart", timeout_s=90)
    second.process.send_signal(signal.SIGTERM)
    assert await second.exit_code(30) == 0, second.log()
    assert_every_event_once(await cluster.rows(), published)
    raw = cluster.raw_deliveries()
    assert len(raw) >= 2000
    assert set(raw) == published


@pytest.mark.timeout(180)
async def test_three_members_one_leaves_with_sigterm_another_joins_nothing_lost(
    settings: Settings, database: Database, clusters: list[Cluster], tmp_path: Path
) -> None:
    """Invariants 6 and 9: three members share the group; one leaves with SIGTERM (exit 0) midway and a new one
    joins later. Every event ends up in the table exactly once."""
    cluster = make_cluster(settings, database, tmp_path, delay_s=0.02)
    clusters.append(cluster)
    published = await cluster.publish(1500)
    members = [cluster.start() for _ in range(3)]
    await until(lambda: all(member.assigned() for member in members), "three members assigned", timeout_s=60)
    await until(lambda: cluster.count_reaches(300), "300 events handled", timeout_s=60)
    leaving = members[1]
    leaving.process.send_signal(signal.SIGTERM)
    assert await leaving.exit_code(SHUTDOWN_TIMEOUT_S + 20) == 0, leaving.log()
    assert await cluster.count() < 1500, "everything was handled before the member left"
    members.append(cluster.start())
    await until(lambda: cluster.count_reaches(1500), "all 1 500 events handled", timeout_s=90)
    for member in (members[0], members[2], members[3]):
        member.process.send_signal(signal.SIGTERM)
    for member in (members[0], members[2], members[3]):
        assert await member.exit_code(SHUTDOWN_TIMEOUT_S + 20) == 0, member.log()
    assert_every_event_once(await cluster.rows(), published)


@pytest.mark.timeout(120)
async def test_sigterm_under_load_exits_0_and_commits_exactly_what_was_handled(
    settings: Settings, database: Database, clusters: list[Cluster], tmp_path: Path
) -> None:
    """Invariant 9 (and 1): SIGTERM while busy: the process exits 0 within the shutdown timeout (plus leaving the
    group), and its committed offsets are 1 + the last handled offset of each partition."""
    cluster = make_cluster(settings, database, tmp_path, delay_s=0.01)
    clusters.append(cluster)
    published = await cluster.publish(1000)
    member = cluster.start()
    await until(lambda: cluster.count_reaches(200), "200 events handled", timeout_s=60)
    member.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert await member.exit_code(SHUTDOWN_TIMEOUT_S + 20) == 0, member.log()
    assert time.monotonic() - signalled < SHUTDOWN_TIMEOUT_S + 10, "shutdown took longer than its bounds"
    rows = await cluster.rows()
    assert 200 <= len(rows) < 1000
    assert_every_event_once(rows, {event_id for event_id, _, _ in rows})
    assert {event_id for event_id, _, _ in rows} <= published
    assert sorted(cluster.raw_deliveries()) == sorted(event_id for event_id, _, _ in rows)  # no redelivery
    last: dict[int, int] = {}
    for _, partition, offset in rows:
        last[partition] = max(last.get(partition, -1), offset)
    expected = {p: last[p] + 1 if p in last else None for p in range(SESSION_PARTITIONS)}
    assert await cluster.committed() == expected
    for partition, highest in last.items():  # handled in order: every offset up to the partition's last is there
        assert sorted(offset for _, p, offset in rows if p == partition) == list(range(highest + 1))


@pytest.mark.timeout(60)
async def test_second_sigterm_exits_at_once_and_commits_nothing_in_flight(
    settings: Settings, database: Database, clusters: list[Cluster], tmp_path: Path
) -> None:
    """Invariant 9: a second signal exits at once (code 128 + SIGTERM) without waiting for the handlers in flight;
    what they were handling is not committed, so the next start redelivers it."""
    cluster = make_cluster(settings, database, tmp_path, delay_s=30.0)
    clusters.append(cluster)
    await cluster.publish(20)
    member = cluster.start()
    await until(lambda: len(cluster.raw_deliveries()) >= 1, "a handler in flight", timeout_s=60)
    member.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)  # two signals sent back to back may merge into one pending signal
    member.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert await member.exit_code(10) == 128 + signal.SIGTERM, member.log()
    assert time.monotonic() - signalled < SHUTDOWN_TIMEOUT_S, "the second signal waited for the handlers"
    assert await cluster.count() == 0
    assert set((await cluster.committed()).values()) == {None}
