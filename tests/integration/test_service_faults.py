"""Faults of the services around eventbus, with real servers: no mock of Kafka, PostgreSQL or Redis.

- PostgreSQL (a private server of this module, never the shared one) stopped for ~5 s and started again
  while the ``credits`` and ``payments`` groups work: the handlers and the payment workers wait and retry;
  every completion is deducted exactly once (one ledger row per event id), every balance is exact, every
  payment request gets one result (``payment:processed`` or ``payment:failed``, one event id), nothing is
  dead-lettered, and both groups are still running afterwards.
- Redis (a private server) unreachable: an outage shorter than the ``cache`` group's bound is waited out
  (the invalidations published meanwhile delete their keys and publish ``cache:coach_data_refreshed`` once
  Redis is back, no dead letter); past the bound the invalidation is dead-lettered with
  ``RetryBoundExceededError`` naming the cache, and once Redis is back later events drain normally.
- The embedded broker (Tansu, memory only) restarted on the same port under a running group: the group
  does not loop forever. It notices that the broker lost its state and stops within a bound with a
  non-retriable ``BrokerError`` saying so, having logged a bounded number of warnings meanwhile.

The topics are read back with ``infra._reader.read_all`` (no consumer group), never through the groups.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import bindparam, text

from consumers import (
    PROCESSED_EVENTS_MIGRATION,
    ConsumerGroup,
    Database,
    GroupSettings,
    HandlerContext,
    MemoryCache,
    ProcessedEventStore,
    RedisCache,
    Resources,
    RetryPolicy,
    run_groups,
)
from consumers.groups import cache, payments
from consumers.groups import credits as credit
from infra._broker_probe import free_port
from infra._dlq import DeadLetter, list_dead_letters
from infra._embedded import EmbeddedBroker
from infra._reader import read_all
from infra._settings import Settings
from infra._topics import TOPIC_SPECS, apply_topics
from producers import EventPublisher, kafka_admin
from schemas import (
    CacheCoachDataRefreshed,
    CoachProfileUpdated,
    Event,
    PaymentFailed,
    PaymentProcessed,
    PaymentProcessRequired,
    SessionCompleted,
    SessionCreated,
)
from schemas.errors import BrokerError
from tests.conftest import KafkaTarget, make_settings
from tests.harness import until
from tests.private_postgres import PrivatePostgres

pytestmark = [pytest.mark.integration]

HOST = "127.0.0.1"


def _alive(task: asyncio.Task[None]) -> None:
    """Fail when the ``run_groups`` task ended (its error, if any, is raised here)."""
    if task.done():
        task.result()
        raise AssertionError("run_groups returned: a group stopped")


def _run_groups(
    groups: list[ConsumerGroup],
    settings: Settings,
    stop: asyncio.Event,
    *,
    store: ProcessedEventStore | None = None,
    started: asyncio.Event | None = None,
) -> asyncio.Task[None]:
    return asyncio.create_task(
        run_groups(
            groups,
            connection=settings.connection(),
            publisher_config=settings.publisher_config("faults"),
            consumer_config=settings.consumer_config(),
            runtime_config=settings.runtime_config(backoff_initial_s=0.05, commit_interval_s=0.2, concurrency=4),
            stop=stop,
            store=store,
            started=started,
        )
    )


async def _apply_topics(settings: Settings) -> None:
    """Apply this test's topics, then wait until the broker lists every one of them.

    Apache Kafka lists a new topic in metadata answers only a moment after creating it; a publisher
    started in that moment believes the topic missing (for its 5 s topic cache), and a follow-up
    published to it meanwhile is dead-lettered as ``UnknownTopicError`` (seen once in this module).
    """
    connection = settings.connection()
    await apply_topics(connection, replication_factor=settings.replication)
    wanted = {connection.topic(spec.name) for spec in TOPIC_SPECS}

    async def listed() -> bool:
        async with kafka_admin(connection, "listing topics") as admin:
            return wanted <= await admin.topic_names()

    await until(listed, "every topic listed by the broker", timeout_s=30, interval_s=0.2)


async def _stop(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    stop.set()
    await asyncio.wait_for(task, timeout=60)


async def _events(settings: Settings, entity: str) -> list[Event]:
    return [r.event async for r in read_all(settings.connection(), [entity]) if r.event is not None]


USERS = 20
GRANT = 1_000
COMPLETIONS = 300
PAYMENTS = 300


def _completion(run: str, n: int, users: list[str]) -> SessionCompleted:
    return SessionCompleted(
        session_id=f"session-{run}-{n}",
        coach_id=f"coach-{run}",
        user_id=users[n % len(users)],
        cost_credits=1 + n % 3,
        completed_at=datetime(2100, 1, 1, tzinfo=UTC),
    )


def _payment(run: str, n: int) -> PaymentProcessRequired:
    amount = "1500.00" if n % 10 == 0 else f"{10 + n % 90}.50"
    return PaymentProcessRequired.model_validate(
        {"payment_id": f"{run}-p{n}", "session_id": f"session-{run}-{n}", "user_id": f"u-{run}", "amount": amount}
    )


async def _ledger_rows(database: Database, users: list[str]) -> Counter[str]:
    """Deductions in the ledger of ``users``: how many rows per entry id (the event id of the completion)."""
    query = text(
        "SELECT entry_id FROM credits_ledger WHERE reason = 'session_completed' AND user_id IN :users"
    ).bindparams(bindparam("users", expanding=True))
    async with database.begin() as conn:
        return Counter(str(row[0]) for row in await conn.execute(query, {"users": users}))


async def _payment_statuses(database: Database, run: str) -> Counter[str]:
    async with database.begin() as conn:
        rows = await conn.execute(
            text("SELECT status FROM payments_queue WHERE payment_id LIKE :run"), {"run": f"{run}-%"}
        )
        return Counter(str(row[0]) for row in rows)


@dataclass
class CreditsAndPayments:
    """What the PostgreSQL test publishes, and what it reads back once the groups are done."""

    run: str
    users: list[str]
    completions: list[SessionCompleted]
    requests: list[PaymentProcessRequired]
    gateway: payments.SimulatedGateway

    @classmethod
    def new(cls) -> CreditsAndPayments:
        run = f"pgr-{uuid.uuid4().hex[:10]}"
        users = [f"user-{run}-{n}" for n in range(USERS)]
        return cls(
            run=run,
            users=users,
            completions=[_completion(run, n, users) for n in range(COMPLETIONS)],
            requests=[_payment(run, n) for n in range(PAYMENTS)],
            gateway=payments.SimulatedGateway(latency_s=0.002, failure_rate=0.2, seed=7),
        )

    def groups(self, database: Database) -> list[ConsumerGroup]:
        resources = Resources(database=database, cache=MemoryCache(), settings=GroupSettings(payment_workers=2))
        options = payments.WorkerOptions(poll_s=0.05, lease_s=10.0, retry_backoff_s=0.05, retry_backoff_max_s=1.0)
        return [credit.build(resources), payments.build(resources, gateway=self.gateway, options=options)]

    async def settled(self, database: Database) -> bool:
        statuses = await _payment_statuses(database, self.run)
        finished = statuses["processed"] + statuses["failed"]
        return len(await _ledger_rows(database, self.users)) == COMPLETIONS and finished == PAYMENTS

    async def check(self, database: Database, settings: Settings) -> None:
        """Every completion deducted once, balances exact, one result per payment, no dead letter."""
        rows = await _ledger_rows(database, self.users)
        assert rows == Counter({str(e.event_id): 1 for e in self.completions}), "a completion lost or deducted twice"
        spent: Counter[str] = Counter()
        for completion in self.completions:
            spent[completion.user_id] += completion.cost_credits
        balances = {user: await credit.get_balance(database, user) for user in self.users}
        assert balances == {user: GRANT - spent[user] for user in self.users}
        statuses = await _payment_statuses(database, self.run)
        assert statuses == Counter({"processed": statuses["processed"], "failed": statuses["failed"]})
        results: defaultdict[str, set[tuple[str, uuid.UUID]]] = defaultdict(set)
        for event in await _events(settings, "payment"):
            if isinstance(event, PaymentProcessed | PaymentFailed) and event.payment_id.startswith(f"{self.run}-"):
                results[event.payment_id].add((event.event_type, event.event_id))
        assert set(results) == {r.payment_id for r in self.requests}, "a payment request got no result"
        doubled = {payment_id: found for payment_id, found in results.items() if len(found) != 1}
        assert not doubled, f"payments with more than one result: {list(doubled.items())[:3]}"
        assert self.gateway.charges == PAYMENTS
        outcomes = Counter(next(iter(found))[0] for found in results.values())
        assert outcomes == Counter({"payment:processed": statuses["processed"], "payment:failed": statuses["failed"]})
        assert await list_dead_letters(settings.connection()) == []


@pytest.mark.timeout(300)
async def test_postgresql_restarted_under_credits_and_payments_loses_nothing_applies_nothing_twice_stops_no_group(
    kafka_target: KafkaTarget, private_postgres: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    settings = make_settings(kafka_target)
    await _apply_topics(settings)
    database = Database(private_postgres.url)
    await database.migrate([PROCESSED_EVENTS_MIGRATION, *credit.MIGRATIONS, *payments.MIGRATIONS])
    work = CreditsAndPayments.new()
    stop, started = asyncio.Event(), asyncio.Event()
    task = _run_groups(work.groups(database), settings, stop, store=ProcessedEventStore(database), started=started)
    half_c, half_p = COMPLETIONS // 2, PAYMENTS // 2
    try:
        await asyncio.wait_for(started.wait(), timeout=60)
        async with EventPublisher(connection=settings.connection(), config=settings.publisher_config("t")) as pub:
            for user in work.users:
                await credit.grant_credits(database, pub, user, GRANT)
            await pub.publish_many([*work.completions[:half_c], *work.requests[:half_p]])

            async def under_way() -> bool:
                _alive(task)
                return len(await _ledger_rows(database, work.users)) >= 30

            await until(under_way, "the credits group under way", timeout_s=60, interval_s=0.1)
            caplog.clear()
            await asyncio.to_thread(private_postgres.stop)
            outage = time.monotonic()
            await pub.publish_many([*work.completions[half_c:], *work.requests[half_p:]])  # while it is down
            await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - outage)))  # the outage itself
            _alive(task)
            await asyncio.to_thread(private_postgres.start)

        async def settled() -> bool:
            _alive(task)
            return await work.settled(database)

        await until(settled, "every completion deducted and every payment finished", timeout_s=120, interval_s=0.5)
        await asyncio.sleep(1.0)  # room for a (wrong) second deduction or result
        await work.check(database, settings)
        _alive(task)
    finally:
        if not private_postgres.running():
            await asyncio.to_thread(private_postgres.start)
        await _stop(task, stop)
        await database.close()

    waits = [r for r in caplog.records if r.levelno == logging.WARNING and "database failing" in r.getMessage()]
    assert waits, "no handler or worker reported waiting for the database: the outage was not seen"


# -- a private Redis server -------------------------------------------------------------------------------


class PrivateRedis:
    """A ``redis-server`` child process of its own on a free port; its data in ``base`` (loaded on restart).

    Nothing is saved automatically (``--save ""``); ``SAVE`` writes ``base/dump.rdb``, which a start
    loads again, so keys set before an outage are there after it.
    Example: ``server = PrivateRedis(base); server.start(); RedisCache(server.url)``
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port(HOST)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        argv = [binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        argv += ["--daemonize", "no", "--dir", str(self.base), "--dbfilename", "dump.rdb"]
        with (self.base / "redis.log").open("ab") as log:
            self._process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                msg = f"redis-server on port {self.port} did not start; see {self.base / 'redis.log'}"
                raise RuntimeError(msg)
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A Redis server for one test (the shared one is never stopped)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    base = Path(tempfile.mkdtemp(prefix="eventbus-redis-"))
    server = PrivateRedis(base)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def unused_database(tmp_path: Path) -> AsyncIterator[Database]:
    """The cache group has no tables; ``Resources`` still wants a database (never connected)."""
    database = Database(f"sqlite:///{tmp_path}/unused.sqlite")
    try:
        yield database
    finally:
        await database.close()


BOUND_S = 6.0
"""The cache group's outage bound in this test."""


async def _redis_get(url: str, *keys: str) -> list[object]:
    client = Redis.from_url(url)
    try:
        return list(await client.mget(keys))
    finally:
        await client.aclose()


async def _redis_set_and_save(url: str, keys: list[str]) -> None:
    """Set ``keys`` and ``SAVE``: a restarted server loads them again."""
    client = Redis.from_url(url)
    try:
        await client.mset(dict.fromkeys(keys, b"cached"))
        await client.save()
    finally:
        await client.aclose()


def _keys(coaches: set[str]) -> list[str]:
    return [key for coach in sorted(coaches) for key in cache.coach_keys(coach)]


@dataclass
class CacheScene:
    """The ``cache`` group running on a private Redis, and what the test publishes and reads back."""

    settings: Settings
    redis: PrivateRedis
    task: asyncio.Task[None]
    publisher: EventPublisher

    async def letters(self) -> list[DeadLetter]:
        return await list_dead_letters(self.settings.connection(), group="cache")

    async def refreshed(self, coaches: set[str]) -> set[str]:
        """The coaches of ``coaches`` with a ``cache:coach_data_refreshed`` on the cache topic."""
        events = await _events(self.settings, "cache")
        return {e.coach_id for e in events if isinstance(e, CacheCoachDataRefreshed) and e.coach_id in coaches}

    async def invalidate(self, coaches: set[str]) -> list[Event]:
        events: list[Event] = [CoachProfileUpdated(coach_id=c, changed_fields=["bio"]) for c in sorted(coaches)]
        await self.publisher.publish_many(events)
        return events

    async def drained(self, coaches: set[str]) -> bool:
        """Every key of ``coaches`` deleted and every refresh published (fails when the group stopped)."""
        _alive(self.task)
        gone = all(value is None for value in await _redis_get(self.redis.url, *_keys(coaches)))
        return gone and await self.refreshed(coaches) == coaches


async def _outage_shorter_than_the_bound(scene: CacheScene, run: str) -> None:
    """Invalidations published while Redis is down wait, and happen once it is back; no dead letter."""
    coaches = {f"coach-{run}-a{n}" for n in range(5)}
    control = f"eventbus:test:{run}:control"
    await _redis_set_and_save(scene.redis.url, [control, *_keys(coaches)])
    await asyncio.to_thread(scene.redis.stop)
    down = time.monotonic()
    await scene.invalidate(coaches)
    await asyncio.sleep(max(0.0, 2.5 - (time.monotonic() - down)))  # the outage itself
    assert await scene.refreshed(coaches) == set(), "handled while Redis was down"
    await asyncio.to_thread(scene.redis.start)
    assert time.monotonic() - down < BOUND_S
    assert await _redis_get(scene.redis.url, control) == [b"cached"], "the saved keys were not loaded again"
    await until(lambda: scene.drained(coaches), "the invalidations of the outage handled", timeout_s=30)
    assert await scene.letters() == [], "dead-lettered during an outage shorter than the bound"


@pytest.mark.timeout(180)
async def test_redis_unreachable_invalidations_wait_within_the_bound_then_dead_letter_and_drain_on_recovery(
    kafka_target: KafkaTarget,
    private_redis: PrivateRedis,
    unused_database: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    settings = make_settings(kafka_target)
    await _apply_topics(settings)
    run = uuid.uuid4().hex[:10]
    redis = RedisCache(private_redis.url)
    policy = RetryPolicy(initial_s=0.05, max_s=0.5, bound_s=BOUND_S, log_every_s=2.0)
    group = cache.build(Resources(database=unused_database, cache=redis, settings=GroupSettings()), retry=policy)
    stop, started = asyncio.Event(), asyncio.Event()
    task = _run_groups([group], settings, stop, started=started)
    try:
        await asyncio.wait_for(started.wait(), timeout=60)
        async with EventPublisher(connection=settings.connection(), config=settings.publisher_config("t")) as pub:
            scene = CacheScene(settings, private_redis, task, pub)
            await _outage_shorter_than_the_bound(scene, run)

            # an outage longer than the bound: the invalidation is dead-lettered, saying why
            caplog.clear()
            await asyncio.to_thread(private_redis.stop)
            down = time.monotonic()
            (late,) = await scene.invalidate({f"coach-{run}-b"})

            async def dead_lettered() -> bool:
                _alive(task)
                return bool(await scene.letters())

            await until(dead_lettered, "the dead letter of the long outage", timeout_s=BOUND_S + 40, interval_s=0.5)
            waited = time.monotonic() - down
            warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "eventbus.retry"]
            await asyncio.to_thread(private_redis.start)

            # once Redis is back, later events drain normally
            after = {f"coach-{run}-c{n}" for n in range(5)}
            await _redis_set_and_save(private_redis.url, _keys(after))
            await scene.invalidate(after)
            await until(lambda: scene.drained(after), "the events after the recovery handled", timeout_s=30)
            found = [dead.letter for dead in await scene.letters()]
            assert isinstance(late, CoachProfileUpdated)
            assert await scene.refreshed({late.coach_id}) == set(), "the dead-lettered invalidation was also done"
        _alive(task)
    finally:
        await _stop(task, stop)
        await redis.close()

    assert BOUND_S <= waited < BOUND_S + 30, f"dead-lettered after {waited:.1f} s, the bound is {BOUND_S:g} s"
    (letter,) = found
    assert letter.original_event_id == late.event_id
    assert (letter.consumer_group, letter.error_type) == ("cache", "RetryBoundExceededError")
    assert f"invalidating coach {late.coach_id!r}: cache kept failing for" in letter.error_message
    assert f"longer than the {BOUND_S:g} s bound" in letter.error_message
    assert "redis DEL failed" in letter.error_message
    assert 1 <= len(warnings) <= BOUND_S / policy.log_every_s + 3, [r.getMessage() for r in warnings]


# -- the embedded broker restarted ------------------------------------------------------------------------


@pytest.mark.timeout(180)
async def test_embedded_broker_restarted_under_a_group_stops_it_with_a_clear_error_and_few_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    broker = EmbeddedBroker(port=free_port(HOST))
    await asyncio.to_thread(broker.start)
    try:
        settings = make_settings(KafkaTarget("restarted", broker.bootstrap_servers, "embedded"))
        await _apply_topics(settings)
        group = ConsumerGroup(f"restart-{uuid.uuid4().hex[:10]}")
        seen: Counter[str] = Counter()

        @group.handler(SessionCreated)
        async def record(event: SessionCreated, ctx: HandlerContext) -> None:
            seen[event.session_id] += 1

        before: list[Event] = [_booking(f"before-{n}") for n in range(20)]
        stop, started = asyncio.Event(), asyncio.Event()
        task = _run_groups([group], settings, stop, started=started)
        try:
            await asyncio.wait_for(started.wait(), timeout=60)
            async with EventPublisher(connection=settings.connection(), config=settings.publisher_config("t")) as pub:
                await pub.publish_many(before)
            wanted = {e.session_id for e in before if isinstance(e, SessionCreated)}
            await until(lambda: set(seen) >= wanted or task.done(), "the first events handled")
            await asyncio.sleep(1.0)  # a few commit intervals: the group's offsets are on the broker
            caplog.clear()
            restarted = time.monotonic()
            await asyncio.to_thread(broker.stop)
            await asyncio.to_thread(broker.start)
            done, _ = await asyncio.wait([task], timeout=60)
            ended = time.monotonic() - restarted
            lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
        finally:
            await _stop_quietly(task, stop)
    finally:
        await asyncio.to_thread(broker.stop)

    shown = "\n".join(f"{r.name} {r.levelname} {r.getMessage()}" for r in lines)
    assert done, f"the group was still looping 60 s after the restart; its warnings:\n{shown}"
    error = task.exception()
    assert error is not None, "the group returned quietly"
    assert isinstance(error.__cause__, BrokerError), repr(error)
    assert not error.__cause__.retriable
    assert "the broker lost the state of group" in str(error)
    assert len(lines) <= 20, f"{len(lines)} warning lines in {ended:.0f} s:\n{shown}"
    assert any("fetching cannot go on" in r.getMessage() for r in lines), shown
    assert max(seen.values()) == 1


async def _stop_quietly(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Stop the task; its error stays on the task (read by the test)."""
    stop.set()
    await asyncio.wait([task], timeout=60)
    assert task.done(), "the group did not stop"


def _booking(session_id: str) -> SessionCreated:
    return SessionCreated(
        session_id=session_id,
        coach_id="coach-restart",
        user_id=f"user-{session_id}",
        scheduled_at=datetime(2100, 1, 1, tzinfo=UTC),
        session_type="video-call",
        cost_credits=1,
    )
