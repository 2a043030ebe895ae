"""The consumer runtime's behaviour suite, run unchanged on the fake and on the embedded broker.

Not collected by itself: a module subclasses ``RuntimeContract`` as ``Test...`` with a ``harness`` fixture.
Tests name the delivery invariant they prove (docs/delivery-invariants.md). Invariant 2 needs a broker that
refuses dead letters mid-run: only the fake does that cheaply, so it is in tests/unit/test_runtime_memory.py.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, Self, cast
from uuid import uuid4

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text

import tests.harness
from consumers import (
    ConsumerGroup,
    ConsumerTransport,
    Database,
    GroupRunner,
    HandlerContext,
    Migration,
    ProcessedEventStore,
    RuntimeConfig,
    RuntimeMetrics,
    TopicPartition,
    follow_up_id,
    group_id,
)
from producers import Delivery, EventPublisher, KafkaConnection, OutgoingRecord, murmur2_partition
from schemas import AvroCodec, Event, FatalHandlerError, RetriableHandlerError, SessionCreated, SystemErrorEvent
from tests.events_factory import example_event
from tests.harness import FAST, POSTGRES_URL

__all__ = ["RuntimeContract", "RuntimeHarness"]

CODEC = AvroCodec()
SESSION_PARTITIONS = 6
EFFECTS_TABLE = "CREATE TABLE IF NOT EXISTS runtime_contract_effects (group_name VARCHAR(200), event_id VARCHAR(36))"
EFFECTS_MIGRATION = Migration(7_340_001, "runtime contract effects", [EFFECTS_TABLE])


class RuntimeHarness(Protocol):
    """What the contract needs from a broker under test."""

    connection: KafkaConnection  # its topic prefix has every entity topic applied
    publisher: EventPublisher  # started; tests publish with it, runners publish follow-ups and dead letters

    def transport(self, group_id: str) -> ConsumerTransport:
        """A new consumer-group member for ``group_id`` (not started)."""

    async def publish_raw(self, record: OutgoingRecord) -> Delivery:
        """Store arbitrary bytes (no codec) and wait for the acknowledgement."""

    async def committed(self, group_id: str, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offsets, read from the broker (not through a running member)."""

    async def values(self, entity: str, count: int) -> list[bytes]:
        """The values of every record of an entity topic, waiting until at least ``count`` are there."""


async def until(check: Callable[[], object], what: str, timeout_s: float = 30.0) -> None:
    """``tests.harness.until`` with the contract's default limit of 30 s (it runs on real brokers too)."""
    await tests.harness.until(check, what, timeout_s)


def session(key: str, seq: int = 0, **metadata: Any) -> SessionCreated:
    """A session:created event keyed ``key`` carrying ``seq`` in ``cost_credits``."""
    extra = {"metadata": metadata} if metadata else {}
    return cast(SessionCreated, example_event("session:created", session_id=key, cost_credits=seq, **extra))


def keys_on_distinct_partitions(count: int, prefix: str = "key") -> list[str]:
    """``count`` keys that the default partitioner puts on different session partitions."""
    keys: dict[int, str] = {}
    for key in (f"{prefix}-{index}" for index in range(100)):
        keys.setdefault(murmur2_partition(key.encode(), SESSION_PARTITIONS), key)
    return list(keys.values())[:count]


def new_group(purpose: str) -> ConsumerGroup:
    """A group whose name no other test uses (processed_events rows never collide)."""
    return ConsumerGroup(f"{purpose}-{uuid4().hex[:10]}")


def ends(deliveries: Iterable[Delivery]) -> dict[TopicPartition, int]:
    """1 + the last offset written to each partition."""
    return {TopicPartition(d.topic, d.partition): d.offset + 1 for d in sorted(deliveries, key=lambda d: d.offset)}


async def publish(harness: RuntimeHarness, events: list[Event]) -> list[Delivery]:
    results = await harness.publisher.publish_many(events)
    return [Delivery(r.topic, r.partition, r.offset) for r in results]


async def dead_letters(harness: RuntimeHarness, count: int) -> list[SystemErrorEvent]:
    letters = [CODEC.decode(value) for value in await harness.values("system", count)]
    return [letter for letter in letters if isinstance(letter, SystemErrorEvent)]


class GroupRun:
    """A ``GroupRunner`` running in a task: ``async with GroupRun(h, group) as run: ...`` stops it on exit."""

    def __init__(
        self,
        harness: RuntimeHarness,
        group: ConsumerGroup,
        *,
        store: ProcessedEventStore | None = None,
        **overrides: Any,
    ) -> None:
        self.harness = harness
        self.group_id = group_id(harness.connection, group)
        self.runner = GroupRunner(
            group,
            transport=harness.transport(self.group_id),
            publisher=harness.publisher,
            config=RuntimeConfig(**{**FAST, **overrides}),
            store=store,
            metrics=RuntimeMetrics(CollectorRegistry()),
        )
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        task = self.task = asyncio.create_task(self.runner.run(self.stop))
        await until(lambda: self.runner.assigned.is_set() or task.done(), "the first assignment")
        if task.done():
            task.result()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Set the stop event and wait for ``run`` to return (shutdown included)."""
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, timeout=60)

    async def committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        return await self.harness.committed(self.group_id, partitions)

    async def committed_reach(self, expected: dict[TopicPartition, int]) -> bool:
        return await self.committed(expected) == expected

    async def run_until_committed(self, deliveries: Iterable[Delivery]) -> None:
        """Run until the group has committed past every one of ``deliveries``, then stop."""
        async with self:
            await until(lambda: self.committed_reach(ends(deliveries)), "commits past every record")


class RuntimeContract:
    """Delivery behaviour every transport must give the runtime; ``harness`` is a fixture of the subclass."""

    async def test_retries_then_success_commit_and_failures_are_dead_lettered(self, harness: RuntimeHarness) -> None:
        """Retriable failures are retried in place; fatal ones and exhausted retries become dead
        letters (Invariant 2: the group commits past them only once they are acknowledged)."""
        group = new_group("retry")
        calls: Counter[str] = Counter()
        failures: dict[str, Callable[[int], BaseException | None]] = {
            "retry-error": lambda n: RetriableHandlerError("busy") if n <= 2 else None,
            "retry-timeout": lambda n: TimeoutError("slow gateway") if n <= 2 else None,
            "fatal": lambda _: FatalHandlerError("business rule"),
            "bug": lambda _: ValueError("a bug"),
            "spent": lambda _: RetriableHandlerError("still busy"),
            "fine": lambda _: None,
        }

        @group.handler(SessionCreated)
        async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
            calls[event.session_id] += 1
            error = failures[event.session_id](calls[event.session_id])
            if error is not None:
                raise error

        events = {key: session(key) for key in failures}
        deliveries = await publish(harness, list(events.values()))
        await GroupRun(harness, group, max_attempts=3).run_until_committed(deliveries)
        assert calls == {"retry-error": 3, "retry-timeout": 3, "fatal": 1, "bug": 1, "spent": 3, "fine": 1}
        letters = {letter.original_event_id: letter for letter in await dead_letters(harness, 3)}
        assert len(letters) == 3
        letter_of = {"fatal": ("FatalHandlerError", 1), "bug": ("ValueError", 1), "spent": ("RetriableHandlerError", 3)}
        for key, (error_type, attempts) in letter_of.items():
            letter = letters[events[key].event_id]
            assert (letter.error_type, letter.attempts) == (error_type, attempts), key
            assert letter.consumer_group == group.name
            assert letter.original_event_type == "session:created"
            assert letter.original_key == key.encode()
            assert letter.original_topic == harness.connection.topic("session")
            assert letter.first_failure_at <= letter.last_failure_at
            assert letter.metadata.causation_id == events[key].event_id
            assert CODEC.decode(letter.original_value).event_id == events[key].event_id

    async def test_invariant_8_undecodable_records_are_dead_lettered_byte_for_byte(
        self, harness: RuntimeHarness
    ) -> None:
        """Invariant 8: garbage, an unknown fingerprint and a truncated body become dead letters with
        the original value, key and headers; the good records around them are handled and committed."""
        group = new_group("decode")
        handled: list[int] = []

        @group.handler(SessionCreated)
        async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
            handled.append(event.cost_credits)

        valid = CODEC.encode(session("mixed", 99))
        bad = {
            b"garbage, not avro at all": "CorruptMessageError",
            valid[:2] + b"\xfe" * 8 + valid[10:]: "UnknownSchemaError",
            valid[:-7]: "CorruptMessageError",
        }
        headers = [("event-type", b"session:created"), ("binary", b"\x00\xff\x80\x01"), ("trace", b"abc")]
        topic = harness.connection.topic("session")
        deliveries: list[Delivery] = []
        for index, value in enumerate(bad):
            deliveries.extend(await publish(harness, [session("mixed", index)]))
            deliveries.append(await harness.publish_raw(OutgoingRecord(topic, b"mixed", value, headers)))
        deliveries.extend(await publish(harness, [session("mixed", len(bad))]))
        assert len({d.partition for d in deliveries}) == 1
        await GroupRun(harness, group).run_until_committed(deliveries)
        assert handled == [0, 1, 2, 3]
        letters = await dead_letters(harness, len(bad))
        assert sorted((letter.original_value, letter.error_type) for letter in letters) == sorted(bad.items())
        raw_offsets = {d.offset for d in deliveries[1::2]}
        for letter in letters:
            assert (letter.original_key, letter.original_event_id, letter.attempts) == (b"mixed", None, 0)
            assert [(h.key, h.value) for h in letter.original_headers] == headers
            assert letter.consumer_group == group.name
            assert (letter.original_topic, letter.original_offset) in {(topic, offset) for offset in raw_offsets}

    async def test_invariant_3_order_within_a_partition_with_concurrency(self, harness: RuntimeHarness) -> None:
        """Invariant 3: per key the handler sees events in publish order; even with concurrency 4,
        two records of one partition never run at the same time (partitions do run in parallel)."""
        group = new_group("order")
        keys = keys_on_distinct_partitions(3, "order")
        rng = random.Random(1234)
        seen: dict[str, list[int]] = defaultdict(list)
        in_flight: Counter[int] = Counter()
        max_per_partition = 0
        max_total = 0

        @group.handler(SessionCreated)
        async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
            nonlocal max_per_partition, max_total
            in_flight[ctx.partition] += 1
            max_per_partition = max(max_per_partition, in_flight[ctx.partition])
            max_total = max(max_total, in_flight.total())
            await asyncio.sleep(rng.random() * 0.003)
            seen[event.session_id].append(event.cost_credits)
            in_flight[ctx.partition] -= 1

        deliveries = await publish(harness, [session(key, seq) for seq in range(100) for key in keys])
        await GroupRun(harness, group, concurrency=4).run_until_committed(deliveries)
        assert {key: seen[key] for key in keys} == {key: list(range(100)) for key in keys}
        assert max_per_partition == 1
        assert 2 <= max_total <= 4

    async def test_invariant_1_commit_watermark_stays_below_a_blocked_record(self, harness: RuntimeHarness) -> None:
        """Invariant 1: while record N of one partition is in flight, that partition's committed
        offset stays at N (1 + the last done offset) while another partition commits to its end."""
        group = new_group("watermark")
        blocked_key, free_key = keys_on_distinct_partitions(2, "wm")
        release = asyncio.Event()
        entered = asyncio.Event()

        @group.handler(SessionCreated)
        async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
            if event.session_id == blocked_key and event.cost_credits == 4:
                entered.set()
                await release.wait()

        blocked = await publish(harness, [session(blocked_key, seq) for seq in range(10)])
        free = await publish(harness, [session(free_key, seq) for seq in range(10)])
        blocked_tp = TopicPartition(blocked[4].topic, blocked[4].partition)
        async with GroupRun(harness, group, concurrency=2) as run:
            try:
                await until(entered.is_set, "the blocking record to start")
                await until(lambda: run.committed_reach(ends(free)), "the free partition to commit to its end")
                await until(lambda: run.committed_reach({blocked_tp: blocked[4].offset}), "commit up to record N")
                for _ in range(10):  # observed over several commit intervals, it never passes N
                    assert (await run.committed([blocked_tp]))[blocked_tp] == blocked[4].offset
                    assert run.runner.watermarks()[blocked_tp] == blocked[4].offset
                    await asyncio.sleep(FAST["commit_interval_s"])
            finally:
                release.set()
            await until(lambda: run.committed_reach(ends(blocked)), "the blocked partition to catch up")

    @pytest.mark.parametrize("when_idle", [True, False])
    async def test_a_drained_backlog_is_committed_at_once_not_at_the_next_interval(
        self, harness: RuntimeHarness, when_idle: bool
    ) -> None:
        """With ``commit_when_idle`` (the default) the last record done is committed within a round trip even
        with a 60 s commit interval; without it nothing is committed before the interval (or the shutdown)."""
        group = new_group("idle")
        handled: list[int] = []

        @group.handler(SessionCreated)
        async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
            handled.append(event.cost_credits)

        deliveries = await publish(harness, [session(f"k{n % 5}", n) for n in range(40)])
        async with GroupRun(harness, group, commit_interval_s=60.0, commit_when_idle=when_idle) as run:
            await until(lambda: len(handled) == 40, "every record handled")
            if when_idle:
                await until(lambda: run.committed_reach(ends(deliveries)), "the commit of the drained backlog", 10)
            else:
                await asyncio.sleep(0.5)
                assert set((await run.committed(ends(deliveries))).values()) == {None}
        assert await run.committed_reach(ends(deliveries))  # the shutdown commits in either case

    async def test_invariant_5_follow_ups_are_deterministic_across_redelivery(self, harness: RuntimeHarness) -> None:
        """Invariant 5: ctx.publish gives follow-ups causation_id = source id, the inherited
        correlation id, and an event id from (group, source, type, index): a second attempt of the
        same record republishes the same ids."""
        group = new_group("follow")
        attempts: Counter[str] = Counter()

        @group.handler(SessionCreated)
        async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
            attempts[event.session_id] += 1
            for balance in (1, 2):
                update = example_event("user:credits_updated", user_id=f"u-{event.session_id}", balance=balance)
                await ctx.publish(update)
            if ctx.attempt == 1:
                raise RetriableHandlerError("fail after publishing, to be handled again")

        with_correlation = session("with-corr", correlation_id="corr-1234")
        without = session("without-corr")
        deliveries = await publish(harness, [with_correlation, without])
        await GroupRun(harness, group, max_attempts=3).run_until_committed(deliveries)
        assert attempts == {"with-corr": 2, "without-corr": 2}
        follow_ups = [CODEC.decode(value) for value in await harness.values("user", 8)]
        assert len(follow_ups) == 8
        for source, correlation in ((with_correlation, "corr-1234"), (without, str(without.event_id))):
            mine = [e for e in follow_ups if e.metadata.causation_id == source.event_id]
            assert {e.event_type for e in mine} == {"user:credits_updated"}
            ids = [follow_up_id(group.name, source.event_id, "user:credits_updated", index) for index in (0, 1)]
            assert len(mine) == 4  # both attempts published exactly these two ids:
            pairs = {(e.metadata.event_id, getattr(e, "balance", None)) for e in mine}
            assert pairs == set(zip(ids, (1, 2), strict=True))
            assert {e.metadata.correlation_id for e in mine} == {correlation}

    @pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
    async def test_invariant_4_effects_once_follow_ups_every_time(
        self, harness: RuntimeHarness, backend: str, tmp_path: Path
    ) -> None:
        """Invariant 4: the same event delivered twice applies its effect once (recorded with
        (group, event id) in one transaction) but publishes its follow-up both times, same id."""
        url = f"sqlite:///{tmp_path / 'effects.sqlite'}" if backend == "sqlite" else POSTGRES_URL
        database = Database(url)
        try:
            store = ProcessedEventStore(database)
            await store.migrate()
            await database.migrate([EFFECTS_MIGRATION])
            group = new_group("effects")
            first_times: list[tuple[str, bool]] = []

            @group.handler(SessionCreated)
            async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
                async with ctx.effects() as tx:
                    if tx.first_time:
                        await tx.execute(
                            "INSERT INTO runtime_contract_effects (group_name, event_id) VALUES (:g, :e)",
                            {"g": ctx.group, "e": str(event.event_id)},
                        )
                    first_times.append((event.session_id, tx.first_time))
                await ctx.publish(example_event("user:credits_updated", user_id=event.session_id))

            twice, once = session("twice"), session("once")
            deliveries = await publish(harness, [twice, twice, once])
            await GroupRun(harness, group, store=store).run_until_committed(deliveries)
            assert sorted(first_times) == [("once", True), ("twice", False), ("twice", True)]
            async with database.begin() as conn:
                rows = await conn.execute(
                    text("SELECT event_id FROM runtime_contract_effects WHERE group_name = :g"), {"g": group.name}
                )
                applied = sorted(row[0] for row in rows)
            assert applied == sorted([str(twice.event_id), str(once.event_id)])
            assert await store.seen(group.name, twice.event_id)
            follow_ups = Counter(CODEC.decode(value).event_id for value in await harness.values("user", 3))
            assert follow_ups == {
                follow_up_id(group.name, twice.event_id, "user:credits_updated", 0): 2,
                follow_up_id(group.name, once.event_id, "user:credits_updated", 0): 1,
            }
        finally:
            await database.close()

    async def test_invariant_7_bounded_buffers_pause_and_resume(self, harness: RuntimeHarness) -> None:
        """Invariant 7: fetched-not-done records stay within the bounds (plus one fetch batch);
        partitions are paused, then resumed, and every record is eventually handled."""
        group = new_group("bounded")
        keys = keys_on_distinct_partitions(2, "bound")
        samples: list[tuple[int, int]] = []
        pause_states: dict[int, list[bool]] = defaultdict(list)  # per partition, the `paused` flag as it changed
        handled: Counter[str] = Counter()
        config: dict[str, Any] = {"max_buffered_per_partition": 50, "max_buffered_total": 100, "fetch_max_records": 50}
        run = GroupRun(harness, group, concurrency=2, **config)

        @group.handler(SessionCreated)
        async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
            parts = list(run.runner._parts.values())  # the runner's buffer is what this test is about
            samples.append((run.runner._buffered, max(len(p.queue) for p in parts)))
            for part in parts:
                states = pause_states[part.tp.partition]
                if not states or states[-1] != part.paused:
                    states.append(part.paused)
            handled[event.session_id] += 1
            await asyncio.sleep(0.001)

        deliveries = await publish(harness, [session(key, seq) for seq in range(200) for key in keys])
        await run.run_until_committed(deliveries)
        assert handled == dict.fromkeys(keys, 200)
        assert 50 <= max(total for total, _ in samples) <= 100 + 50
        assert max(queue for _, queue in samples) <= 50 + 50
        assert any(True in states[:-1] for states in pause_states.values()), pause_states  # paused, then resumed

    async def test_invariant_6_9_shutdown_commits_exactly_what_completed(self, harness: RuntimeHarness) -> None:
        """Invariants 6 and 9: stopping under load lets in-flight handlers finish and commits
        1 + the last handled offset per partition; the next member handles exactly the rest."""
        group = new_group("shutdown")
        first: list[tuple[TopicPartition, int]] = []
        second: list[tuple[TopicPartition, int]] = []
        sink = first
        started = finished = 0

        @group.handler(SessionCreated)
        async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
            nonlocal started, finished
            started += 1
            await asyncio.sleep(0.02)
            sink.append((TopicPartition(ctx.topic, ctx.partition), ctx.offset))
            finished += 1

        deliveries = await publish(harness, [session(f"load-{seq % 30}", seq) for seq in range(500)])
        all_records = {(TopicPartition(d.topic, d.partition), d.offset) for d in deliveries}
        partitions = sorted(ends(deliveries))
        async with GroupRun(harness, group, concurrency=4) as run:
            await until(lambda: len(first) >= 100, "100 records handled")
        assert started == finished, "shutdown abandoned a handler that had time to finish"
        assert 100 <= len(first) < 500
        last = {tp: max(offset for other, offset in first if other == tp) for tp, _ in first}
        expected = {tp: last[tp] + 1 if tp in last else None for tp in partitions}
        assert await run.committed(partitions) == expected
        sink = second
        async with GroupRun(harness, group, concurrency=4) as rerun:
            await until(lambda: len(first) + len(second) >= 500, "the rest handled by the next member")
            await until(lambda: rerun.committed_reach(ends(deliveries)), "all 500 records committed")
        assert len(second) == len(set(second))
        assert set(first).isdisjoint(second), "records committed by the first member were redelivered"
        assert set(first) | set(second) == all_records
