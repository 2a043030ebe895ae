"""The consumer runtime on the in-memory fake: the shared contract, what only the fake can
simulate (a broker refusing dead letters or commits), and pure unit tests of the runtime's parts."""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import NAMESPACE_URL, uuid4, uuid5

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from consumers import (
    FOLLOW_UP_NAMESPACE,
    ConsumerGroup,
    ConsumerTransport,
    Database,
    GroupRegistry,
    GroupRunner,
    HandlerContext,
    RuntimeConfig,
    RuntimeMetrics,
    TopicPartition,
    backoff_delay,
    build_dead_letter,
    follow_up_id,
    is_retriable,
)
from consumers import PlainRecord as Record
from consumers.testing import InMemoryBroker, InMemoryConsumerTransport
from infra._settings import Settings
from producers import Delivery, EventPublisher, KafkaConnection, OutgoingRecord, PublisherConfig
from schemas import CATALOG, AvroCodec, SessionCreated, SessionUpdated, SystemErrorEvent, errors
from tests.events_factory import example_event
from tests.harness import new_broker
from tests.runtime_contract import GroupRun, RuntimeContract, dead_letters, ends, new_group, publish, session, until

STALL_MESSAGE = "DEAD LETTER NOT ACKNOWLEDGED"


@dataclass
class MemoryHarness:
    """``RuntimeHarness`` over an ``InMemoryBroker`` with the entity topics under a prefix."""

    broker: InMemoryBroker
    connection: KafkaConnection
    publisher: EventPublisher

    def transport(self, group_id: str) -> ConsumerTransport:
        return InMemoryConsumerTransport(self.broker, group_id)

    async def publish_raw(self, record: OutgoingRecord) -> Delivery:
        return self.broker.append(record)

    async def committed(self, group_id: str, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        offsets = self.broker.group_offsets.get(group_id, {})
        return {tp: offsets.get((tp.topic, tp.partition)) for tp in partitions}

    async def values(self, entity: str, count: int) -> list[bytes]:
        values = [record.value for record in self.broker.records(self.connection.topic(entity))]
        assert len(values) >= count, f"{entity}: {len(values)} records, expected at least {count}"
        return values


@pytest.fixture
async def harness() -> AsyncIterator[MemoryHarness]:
    connection = KafkaConnection(topic_prefix="mem.")
    broker = new_broker(topic_prefix=connection.topic_prefix)
    config = PublisherConfig(service="runtime-test")
    async with EventPublisher(connection=connection, config=config, transport=broker.producer()) as publisher:
        yield MemoryHarness(broker, connection, publisher)


class TestRuntimeOnMemoryBroker(RuntimeContract):
    """The shared runtime contract, on the fake."""


# -- what only the fake can simulate -------------------------------------------------------------


def stall_messages(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if STALL_MESSAGE in r.getMessage()]


async def stalling_group(harness: MemoryHarness) -> tuple[ConsumerGroup, list[int], list[Delivery]]:
    """A group whose handler fails fatally on record 2 of five on one key."""
    group = new_group("stall")
    handled: list[int] = []

    @group.handler(SessionCreated)
    async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
        handled.append(event.cost_credits)
        if event.cost_credits == 2:
            raise errors.FatalHandlerError("business rule")

    return group, handled, await publish(harness, [session("stall", seq) for seq in range(5)])


async def test_invariant_2_dead_letter_before_commit_stalls_then_resumes(
    harness: MemoryHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """Invariant 2: while the dead letter of record 2 is not acknowledged, the partition commits up to 2
    and no further (later records are not even handled) and says so at ERROR; once the dead-letter topic
    is back, the letter is acknowledged and the commit moves past it."""
    group, handled, deliveries = await stalling_group(harness)
    tp = TopicPartition(deliveries[0].topic, deliveries[0].partition)
    system = harness.connection.topic("system")
    # The publisher has already listed the topics, so each dead-letter append now fails at the broker.
    parked = harness.broker.topics.pop(system)
    async with GroupRun(harness, group) as run:
        await until(lambda: run.committed_reach({tp: 2}), "commits up to the failing record")
        await until(lambda: len(stall_messages(caplog)) >= 3, "repeated dead-letter failures")
        assert (await run.committed([tp]))[tp] == 2
        assert handled == [0, 1, 2]
        harness.broker.topics[system] = parked
        await until(lambda: run.committed_reach(ends(deliveries)), "the commit to move past the dead letter")
    assert handled == [0, 1, 2, 3, 4]
    assert all(r.levelno == logging.ERROR for r in stall_messages(caplog))
    [letter] = await dead_letters(harness, 1)
    assert (letter.original_offset, letter.error_type) == (2, "FatalHandlerError")


async def test_invariant_2_shutdown_while_dead_letter_fails_leaves_record_uncommitted(
    harness: MemoryHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """Invariant 2 (and 9): stopping while the dead letter still fails does not commit the record; the
    next member handles it again and dead-letters it once the topic is back."""
    group, handled, deliveries = await stalling_group(harness)
    tp = TopicPartition(deliveries[0].topic, deliveries[0].partition)
    system = harness.connection.topic("system")
    parked = harness.broker.topics.pop(system)
    async with GroupRun(harness, group) as run:
        await until(lambda: len(stall_messages(caplog)) >= 1, "a dead-letter failure")
    assert await run.committed([tp]) == {tp: 2}
    harness.broker.topics[system] = parked
    await GroupRun(harness, group).run_until_committed(deliveries)
    assert handled == [0, 1, 2, 2, 3, 4]
    assert len(await dead_letters(harness, 1)) == 1


async def test_failed_commits_are_not_fatal_and_catch_up(harness: MemoryHarness) -> None:
    """A commit the broker refuses is logged, the group goes on, and a later commit catches up."""
    group = new_group("commit")
    handled: list[int] = []

    @group.handler(SessionCreated)
    async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
        handled.append(event.cost_credits)
        harness.broker.available = False  # from the first record on, every commit fails

    deliveries = await publish(harness, [session("c", seq) for seq in range(20)])
    async with GroupRun(harness, group) as run:
        await until(lambda: len(handled) == 20, "every record handled while commits fail")
        assert await run.committed(ends(deliveries)) == dict.fromkeys(ends(deliveries))
        harness.broker.available = True
        await until(lambda: run.committed_reach(ends(deliveries)), "the commit to catch up")


class _SlowCommits(InMemoryConsumerTransport):
    """Commits that wait until ``release`` is set (a broker slow to answer them)."""

    def __init__(self, broker: InMemoryBroker, group_id: str) -> None:
        super().__init__(broker, group_id)
        self.release = asyncio.Event()
        self.commits_started = 0

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits_started += 1
        await self.release.wait()
        await super().commit(offsets)


@pytest.mark.parametrize("when_idle", [True, False])
async def test_fetching_and_handlers_go_on_while_a_commit_waits_for_the_broker(
    harness: MemoryHarness, when_idle: bool
) -> None:
    """A commit in flight (periodic or idle) blocks neither fetching nor handlers; it lands once answered."""
    group = new_group("slow-commit")
    handled: list[int] = []

    @group.handler(SessionCreated)
    async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
        handled.append(event.cost_credits)

    first = await publish(harness, [session("s", seq) for seq in range(5)])
    transport = _SlowCommits(harness.broker, group.name)
    config = RuntimeConfig(commit_interval_s=0.05, commit_when_idle=when_idle)
    metrics = RuntimeMetrics(CollectorRegistry())
    runner = GroupRunner(group, transport=transport, publisher=harness.publisher, config=config, metrics=metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await until(lambda: len(handled) == 5 and transport.commits_started > 0, "the first records and a commit")
        await asyncio.sleep(4 * config.commit_interval_s)  # periodic commits come due meanwhile
        later = await publish(harness, [session("s", seq) for seq in range(5, 10)])
        await until(lambda: len(handled) == 10, "records published while the commit waits", timeout_s=5)
        assert not run_committed(harness, group.name)  # nothing answered yet
        transport.release.set()
        last = ends(first + later)
        await until(lambda: run_committed(harness, group.name) == last, "the commit to catch up")
    finally:
        transport.release.set()
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    assert handled == list(range(10))


def run_committed(harness: MemoryHarness, group_id: str) -> dict[TopicPartition, int]:
    offsets = harness.broker.group_offsets.get(group_id, {})
    return {TopicPartition(topic, partition): offset for (topic, partition), offset in offsets.items()}


async def test_records_without_a_handler_and_failing_dead_letters_are_skipped(harness: MemoryHarness) -> None:
    """Event types the group does not handle are committed past; a handler failing on a dead letter
    (read from the system topic) does not dead-letter it again."""
    group = new_group("skip")
    seen: list[str] = []

    @group.handler(SessionCreated, SystemErrorEvent)
    async def handle(event: SessionCreated | SystemErrorEvent, ctx: HandlerContext) -> None:
        seen.append(event.event_type)
        if isinstance(event, SystemErrorEvent):
            raise errors.FatalHandlerError("cannot replay")

    events = [session("s"), example_event("session:cancelled", session_id="s"), example_event("system:error")]
    deliveries = await publish(harness, events)
    await GroupRun(harness, group).run_until_committed(deliveries)
    assert sorted(seen) == ["session:created", "system:error"]  # two topics: no order between them
    assert len(await harness.values("system", 1)) == 1


async def test_invariants_6_9_handler_past_the_shutdown_timeout_is_abandoned_and_redelivered(
    harness: MemoryHarness,
) -> None:
    """Invariants 6 and 9: a handler still running when the shutdown timeout ends is cancelled; its record is not
    committed (records before it are) and the next member handles it again."""
    group = new_group("abandon")
    handled: list[int] = []
    cancelled: list[int] = []
    hang = True

    @group.handler(SessionCreated)
    async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
        if event.cost_credits == 3 and hang:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(event.cost_credits)
                raise
        handled.append(event.cost_credits)

    deliveries = await publish(harness, [session("abandon", seq) for seq in range(6)])
    tp = TopicPartition(deliveries[0].topic, deliveries[0].partition)
    async with GroupRun(harness, group, shutdown_timeout_s=0.2) as run:
        await until(lambda: handled == [0, 1, 2], "the records before the hanging one")
    assert cancelled == [3]
    assert await run.committed([tp]) == {tp: 3}
    hang = False
    await GroupRun(harness, group).run_until_committed(deliveries)
    assert handled == [0, 1, 2, 3, 4, 5]


def test_a_group_name_longer_than_a_dead_letter_key_is_refused() -> None:
    with pytest.raises(errors.ConfigurationError, match="invalid group name"):
        ConsumerGroup("g" * 201)


class _BrokenCodec(AvroCodec):
    """A codec whose decoding fails with an error no handler boundary classifies (a runtime bug)."""

    def decode_dict(self, data: bytes) -> Any:
        raise RuntimeError("the runtime itself broke")


async def test_an_error_outside_the_handler_stops_the_group_loudly_instead_of_stalling(harness: MemoryHarness) -> None:
    group = new_group("broken-runtime")

    @group.handler(SessionCreated)
    async def handle(event: SessionCreated, ctx: HandlerContext) -> None: ...

    deliveries = await publish(harness, [session("x", 0)])
    runner = GroupRunner(
        group,
        transport=harness.transport(group.name),
        publisher=harness.publisher,
        codec=_BrokenCodec(),
        metrics=RuntimeMetrics(CollectorRegistry()),
    )
    with pytest.raises(errors.EventBusError, match="the runtime itself broke"):
        await asyncio.wait_for(runner.run(asyncio.Event()), timeout=10)
    tp = next(iter(ends(deliveries)))
    assert await harness.committed(group.name, [tp]) == {tp: None}


async def insert_while_locked(holder: Database, waiter: Database) -> None:
    """Insert through ``waiter`` while ``holder``'s transaction holds SQLite's write lock."""
    async with holder.begin() as conn:
        await conn.execute(text("INSERT INTO t VALUES (1)"))
        async with waiter.begin() as other:
            await other.execute(text("INSERT INTO t VALUES (2)"))


async def test_a_database_lock_timeout_is_retriable(tmp_path: Path) -> None:
    path = tmp_path / "locked.sqlite"
    holder, waiter = Database(f"sqlite:///{path}"), Database(f"sqlite:///{path}?timeout=0.05")
    try:
        async with holder.begin() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
        with pytest.raises(errors.StorageError) as caught:
            await insert_while_locked(holder, waiter)
        assert "locked" in str(caught.value)
        assert is_retriable(caught.value)
    finally:
        await holder.close()
        await waiter.close()


# -- pure unit tests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "retriable"),
    [
        (TimeoutError("slow"), True),
        (ConnectionResetError("reset"), True),
        (errors.RetriableHandlerError("busy"), True),
        (errors.StorageError("db down"), True),
        (errors.StorageError("constraint", retriable=False), False),
        (errors.BrokerError("broker"), True),
        (errors.PublishTimeoutError("no ack"), True),
        (errors.FatalHandlerError("rule"), False),
        (errors.EventValidationError("session:created", [("cost_credits", "negative")]), False),
        (errors.CorruptMessageError("bad bytes"), False),
        (ValueError("bug"), False),
        (OSError("disk"), False),
    ],
)
def test_is_retriable_classification(error: BaseException, retriable: bool) -> None:
    assert is_retriable(error) is retriable


def test_is_retriable_extra_types_and_stated_retriability_wins() -> None:
    assert is_retriable(KeyError("x"), (LookupError,))
    fatal = errors.FatalHandlerError("x")
    assert not is_retriable(fatal, (errors.FatalHandlerError,))  # an error that says so is believed
    error = ValueError("flaky")
    error.retriable = True  # type: ignore[attr-defined]
    assert is_retriable(error)


def test_backoff_delay_grows_exponentially_and_is_capped() -> None:
    config = RuntimeConfig(backoff_initial_s=0.2, backoff_multiplier=2, backoff_max_s=3.0, backoff_jitter=0)
    assert [backoff_delay(attempt, config) for attempt in range(1, 7)] == [0.2, 0.4, 0.8, 1.6, 3.0, 3.0]


def test_backoff_delay_jitter_stays_within_bounds() -> None:
    config = RuntimeConfig(backoff_initial_s=1.0, backoff_multiplier=2, backoff_max_s=5.0, backoff_jitter=0.2)
    rng = random.Random(7)
    for attempt, base in ((1, 1.0), (2, 2.0), (3, 4.0), (9, 5.0)):
        delays = [backoff_delay(attempt, config, rng) for _ in range(200)]
        assert all(base * 0.8 <= delay <= base * 1.2 for delay in delays)
        assert min(delays) < base < max(delays)  # spread on both sides of the base delay
    assert backoff_delay(3, config, random.Random(1)) == backoff_delay(3, config, random.Random(1))


def test_follow_up_id_is_deterministic_and_distinct() -> None:
    source = uuid4()
    first = follow_up_id("credits", source, "user:credits_updated", 0)
    assert first == follow_up_id("credits", source, "user:credits_updated", 0)
    assert first.version == 5
    assert uuid5(NAMESPACE_URL, "https://eventbus.coaching/follow-up") == FOLLOW_UP_NAMESPACE
    others = {
        follow_up_id("credits", source, "user:credits_updated", 1),
        follow_up_id("credits", source, "notification:requested", 0),
        follow_up_id("cache", source, "user:credits_updated", 0),
        follow_up_id("credits", uuid4(), "user:credits_updated", 0),
    }
    assert len(others) == 4
    assert first not in others


def failing() -> ValueError:
    try:
        raise ValueError("amount must be positive")  # noqa: TRY301 - raised to get a traceback
    except ValueError as exc:
        return exc


def test_build_dead_letter_keeps_the_record_exactly() -> None:
    event = session("s-1", correlation_id="corr-9")
    value = AvroCodec().encode(event)
    headers = [("event-type", b"session:created"), ("binary", b"\x00\xff\x01"), ("empty", b"")]
    record = Record("p.session", 4, 17, 0, b"\xffkey\x00", value, headers)
    first, last = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=3)
    kwargs: dict[str, Any] = {"group": "credits", "record": record, "first_failure_at": first, "last_failure_at": last}
    letter = build_dead_letter(**kwargs, error=failing(), attempts=3, event=event)
    assert (letter.original_value, letter.original_key, letter.original_topic) == (value, b"\xffkey\x00", "p.session")
    assert (letter.original_partition, letter.original_offset, letter.attempts) == (4, 17, 3)
    assert [(h.key, h.value) for h in letter.original_headers] == headers
    assert (letter.error_type, letter.error_message) == ("ValueError", "amount must be positive")
    assert "failing" in (letter.error_traceback or "")
    assert (letter.first_failure_at, letter.last_failure_at) == (first, last)
    assert (letter.original_event_type, letter.original_event_id) == ("session:created", event.event_id)
    assert (letter.metadata.causation_id, letter.metadata.correlation_id) == (event.event_id, "corr-9")
    assert AvroCodec().decode(AvroCodec().encode(letter)) == letter  # what is published reads back the same

    raw = Record("p.session", 0, 1, 0, None, None, [])
    undecodable = build_dead_letter(
        **{**kwargs, "record": raw}, error=errors.CorruptMessageError(""), attempts=0, event=None
    )
    assert (undecodable.original_value, undecodable.original_key, undecodable.original_event_id) == (b"", None, None)
    assert undecodable.error_message == "CorruptMessageError"  # an empty message names the error


async def noop(event: Any, ctx: HandlerContext) -> None:
    """A handler that does nothing."""


def test_group_registers_handlers_by_model_and_pattern() -> None:
    group = ConsumerGroup("billing.v2_workers-1")

    @group.handler("session:*")
    async def sessions(event: Any, ctx: HandlerContext) -> None: ...

    @group.handler("payment:processed", "user:credits_updated")
    async def others(event: Any, ctx: HandlerContext) -> None: ...

    session_types = tuple(t for t in CATALOG.event_types if t.startswith("session:"))
    assert all(group.handler_for(t) is sessions for t in session_types)
    assert group.handler_for("payment:processed") is others
    assert group.handler_for("coach:status_changed") is None
    assert group.event_types == (*session_types, "payment:processed", "user:credits_updated")
    assert group.topics == ("session", "payment", "user")
    with pytest.raises(errors.ConfigurationError, match="already has a handler for session:created"):
        group.add(SessionCreated, noop)
    with pytest.raises(errors.UnknownEventTypeError, match="session:nope"):
        group.add("session:nope", noop)
    with pytest.raises(errors.UnknownEventTypeError):
        group.add("nothing:*", noop)


@pytest.mark.parametrize("name", ["", "has space", "slash/name", "semi;colon", "star*", "crédits", "\uff47roup"])
def test_group_names_are_validated(name: str) -> None:
    with pytest.raises(errors.ConfigurationError, match="invalid group name"):
        ConsumerGroup(name)


def test_refused_registration_registers_nothing() -> None:
    group = ConsumerGroup("partial")

    async def first(event: Any, ctx: HandlerContext) -> None: ...
    async def second(event: Any, ctx: HandlerContext) -> None: ...

    group.add(SessionUpdated, first)
    with pytest.raises(errors.ConfigurationError):
        group.add("session:*", second)
    assert group.handler_for("session:created") is None


def test_group_registry_lookup() -> None:
    credits_group, cache = ConsumerGroup("credits"), ConsumerGroup("cache")
    registry = GroupRegistry([credits_group, cache])
    assert registry.get("credits") is credits_group
    assert (len(registry), list(registry)) == (2, [credits_group, cache])
    with pytest.raises(errors.ConfigurationError, match=r"unknown consumer group 'billing'; known: cache, credits"):
        registry.get("billing")
    with pytest.raises(errors.ConfigurationError, match="registered twice"):
        registry.add(ConsumerGroup("cache"))
    with pytest.raises(errors.ConfigurationError, match="known: none"):
        GroupRegistry().get("any")


def test_settings_consumer_config_profile_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("EVENTBUS_")]:
        monkeypatch.delenv(name)
    embedded = Settings(profile="embedded").consumer_config()
    assert (embedded.session_timeout_ms, embedded.heartbeat_interval_ms) == (6000, 500)
    assert embedded.auto_offset_reset == "earliest"
    kafka = Settings(profile="kafka").consumer_config()
    assert (kafka.session_timeout_ms, kafka.heartbeat_interval_ms) == (45000, 3000)
    explicit = Settings(profile="embedded", consumer_session_timeout_ms=3000, consumer_heartbeat_interval_ms=300)
    assert explicit.consumer_config().session_timeout_ms == 3000
    assert explicit.consumer_config().heartbeat_interval_ms == 300
    monkeypatch.setenv("EVENTBUS_CONSUMER_AUTO_OFFSET_RESET", "latest")
    assert Settings(profile="kafka").consumer_config().auto_offset_reset == "latest"
    runtime = Settings(concurrency=8, max_attempts=5).runtime_config(concurrency=None, shutdown_timeout_s=2)
    assert (runtime.concurrency, runtime.max_attempts, runtime.shutdown_timeout_s) == (8, 5, 2)
