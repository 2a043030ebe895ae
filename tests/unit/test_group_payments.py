"""The payments group on the fake broker, over SQLite and PostgreSQL.

Rows are isolated by unique payment ids (PostgreSQL is shared between runs);
the priority test filters by its own run id and deletes its rows afterwards.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from consumers import Database, GroupRunner, ProcessedEventStore, RuntimeConfig, follow_up_id
from consumers._cache import MemoryCache
from consumers._resources import GroupSettings, Resources
from consumers.groups.payments import (
    MIGRATIONS,
    ChargeResult,
    GatewayUnavailableError,
    PaymentDeclinedError,
    PaymentGateway,
    SimulatedGateway,
    WorkerOptions,
    build,
    queue_depth,
)
from consumers.testing import InMemoryBroker
from producers import EventPublisher
from schemas import AvroCodec, Event, PaymentFailed, PaymentProcessed, PaymentProcessRequired
from tests.harness import POSTGRES_URL, migrated_database, running_group, until

CODEC = AvroCodec()
FAST_RUNTIME = RuntimeConfig(backoff_initial_s=0.01, commit_interval_s=0.05, fetch_timeout_s=0.05, concurrency=6)
FAST_WORKERS = WorkerOptions(poll_s=0.05, retry_backoff_s=0.01, max_charge_attempts=3)


# -- helpers ----------------------------------------------------------------------


def uid(label: str) -> str:
    return f"utest-{label}-{uuid.uuid4().hex[:12]}"


def request(payment_id: str, amount: str = "49.90", **meta: Any) -> PaymentProcessRequired:
    """A request; its priority follows from the amount (over 1000 is high)."""
    event = PaymentProcessRequired.model_validate(
        {"payment_id": payment_id, "session_id": f"s-{payment_id}", "user_id": f"u-{payment_id}", "amount": amount}
    )
    return event.with_metadata(**meta) if meta else event


def results(broker: InMemoryBroker, payment_id: str) -> list[Event]:
    """``payment:processed`` / ``payment:failed`` events of one payment, as published."""
    events = (CODEC.decode(record.value) for record in broker.records("payment"))
    return [e for e in events if isinstance(e, PaymentProcessed | PaymentFailed) and e.payment_id == payment_id]


async def row(database: Database, payment_id: str) -> Any:
    async with database.begin() as conn:
        found = await conn.execute(text("SELECT * FROM payments_queue WHERE payment_id = :p"), {"p": payment_id})
        return found.first()


async def delete_rows(database: Database, pattern: str) -> None:
    async with database.begin() as conn:
        await conn.execute(text("DELETE FROM payments_queue WHERE payment_id LIKE :p"), {"p": pattern})


@dataclass
class RecordingGateway:
    """Charges through a ``SimulatedGateway`` and records every call; ``unavailable_first`` calls fail."""

    inner: SimulatedGateway = field(default_factory=lambda: SimulatedGateway(0.0, 0.0, seed=1))
    unavailable_first: int = 0
    calls: list[tuple[str, Decimal, str, str]] = field(default_factory=list)
    gate: asyncio.Event | None = None

    async def charge(self, payment_id: str, amount: Decimal, currency: str, *, idempotency_key: str) -> ChargeResult:
        self.calls.append((payment_id, amount, currency, idempotency_key))
        if self.gate is not None:
            await self.gate.wait()
        if len(self.calls) <= self.unavailable_first:
            raise GatewayUnavailableError(f"simulated outage, call {len(self.calls)}")
        return await self.inner.charge(payment_id, amount, currency, idempotency_key=idempotency_key)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with migrated_database(database_url, MIGRATIONS) as db:
        yield db


@pytest.fixture
async def postgres() -> AsyncIterator[Database]:
    async with migrated_database(POSTGRES_URL, MIGRATIONS) as db:
        yield db


@asynccontextmanager
async def running(
    broker: InMemoryBroker,
    database: Database,
    gateway: PaymentGateway,
    *,
    workers: int = 2,
    options: WorkerOptions = FAST_WORKERS,
) -> AsyncIterator[tuple[EventPublisher, GroupRunner]]:
    """The payments group running on ``broker``; yields the publisher the test publishes with."""
    settings = GroupSettings(payment_workers=workers)
    group = build(Resources(database, MemoryCache(), settings), gateway=gateway, options=options)
    store = ProcessedEventStore(database)
    async with running_group(group, broker, FAST_RUNTIME, store=store, stop_timeout_s=10) as run:
        yield run.publisher, run.runner


def all_payment_records_done(broker: InMemoryBroker, runner: GroupRunner) -> bool:
    """Every record now in the payment topic has been handled by the group."""
    marks = runner.watermarks()
    ends = {index: len(log) for index, log in enumerate(broker.topics["payment"])}
    return all((marks.get(tp) or 0) >= ends[tp.partition] for tp in marks if tp.topic == "payment") and bool(marks)


# -- the simulated gateway --------------------------------------------------------------


async def test_simulated_gateway_replays_the_same_transaction_for_the_same_key() -> None:
    gateway = SimulatedGateway(latency_s=0.0, failure_rate=0.0)
    first = await gateway.charge("p1", Decimal("10.00"), "EUR", idempotency_key="p1")
    again = await gateway.charge("p1", Decimal("10.00"), "EUR", idempotency_key="p1")
    other = await gateway.charge("p2", Decimal("10.00"), "EUR", idempotency_key="p2")
    assert first == again
    assert other.transaction_id != first.transaction_id
    assert (gateway.calls, gateway.charges) == (3, 2)


async def test_simulated_gateway_with_seed_decides_each_key_independently_of_call_order() -> None:
    keys = [f"p{i}" for i in range(200)]

    async def outcomes(order: list[str]) -> dict[str, str]:
        gateway = SimulatedGateway(latency_s=0.0, failure_rate=0.3, seed=42)
        found: dict[str, str] = {}
        for key in order:
            try:
                found[key] = (await gateway.charge(key, Decimal(1), "EUR", idempotency_key=key)).transaction_id
            except PaymentDeclinedError as exc:
                found[key] = f"declined:{exc.code}"
        return found

    forward, backward = await outcomes(keys), await outcomes(keys[::-1])
    assert forward == backward
    declined = sum(value.startswith("declined:") for value in forward.values())
    assert 30 < declined < 90  # about 30 % of 200


async def test_simulated_gateway_declines_every_payment_at_failure_rate_one_and_replays_the_decline() -> None:
    gateway = SimulatedGateway(latency_s=0.0, failure_rate=1.0, seed=5)
    with pytest.raises(PaymentDeclinedError) as first:
        await gateway.charge("p1", Decimal(5), "EUR", idempotency_key="p1")
    with pytest.raises(PaymentDeclinedError) as again:
        await gateway.charge("p1", Decimal(5), "EUR", idempotency_key="p1")
    assert (first.value.message, first.value.code) == (again.value.message, again.value.code)
    assert not first.value.retriable
    assert gateway.charges == 1


async def test_simulated_gateway_waits_its_latency_and_can_be_transiently_unavailable() -> None:
    slow = SimulatedGateway(latency_s=0.05, failure_rate=0.0)
    started = time.monotonic()
    await slow.charge("p1", Decimal(1), "EUR", idempotency_key="p1")
    assert time.monotonic() - started >= 0.045
    down = SimulatedGateway(latency_s=0.0, failure_rate=0.0, unavailable_rate=1.0)
    with pytest.raises(GatewayUnavailableError) as caught:
        await down.charge("p1", Decimal(1), "EUR", idempotency_key="p1")
    assert caught.value.retriable
    assert isinstance(down, PaymentGateway)


@pytest.mark.parametrize("bad", [{"failure_rate": 1.5}, {"latency_s": -1.0}, {"unavailable_rate": -0.1}])
def test_simulated_gateway_rejects_impossible_settings(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        SimulatedGateway(**bad)


# -- the group ------------------------------------------------------------------------


async def test_processed_payment_publishes_payment_processed_with_the_transaction_id(
    broker: InMemoryBroker, database: Database
) -> None:
    gateway = SimulatedGateway(latency_s=0.0, failure_rate=0.0, seed=11)
    pid = uid("ok")
    sent = request(pid, "49.90", correlation_id="flow-42")
    async with running(broker, database, gateway) as (publisher, _):
        await publisher.publish(sent)
        await until(lambda: results(broker, pid), "payment:processed")
        await until(lambda: _status(database, pid, "processed"), "the row marked processed")
    [event] = results(broker, pid)
    assert isinstance(event, PaymentProcessed)
    expected = await SimulatedGateway(latency_s=0.0, failure_rate=0.0, seed=11).charge(
        pid, Decimal("49.90"), "EUR", idempotency_key=pid
    )
    assert event.transaction_id == expected.transaction_id
    assert (event.amount, event.currency, event.session_id, event.user_id) == (
        Decimal("49.90"),
        "EUR",
        f"s-{pid}",
        f"u-{pid}",
    )
    # invariant 5: deterministic follow-up id, causation = the request, inherited correlation
    assert event.event_id == follow_up_id("payments", sent.event_id, "payment:processed", 0)
    assert event.metadata.causation_id == sent.event_id
    assert event.metadata.correlation_id == "flow-42"
    stored = await row(database, pid)
    assert (stored.transaction_id, stored.error, stored.attempts) == (expected.transaction_id, None, 1)


async def _status(database: Database, payment_id: str, status: str) -> bool:
    found = await row(database, payment_id)
    return found is not None and found.status == status


async def test_declined_payment_publishes_payment_failed_with_the_error(
    broker: InMemoryBroker, database: Database
) -> None:
    pid = uid("declined")
    sent = request(pid, "20.00")
    async with running(broker, database, SimulatedGateway(latency_s=0.0, failure_rate=1.0, seed=3)) as (publisher, _):
        await publisher.publish(sent)
        await until(lambda: results(broker, pid), "payment:failed")
        await until(lambda: _status(database, pid, "failed"), "the row marked failed")
    [event] = results(broker, pid)
    assert isinstance(event, PaymentFailed)
    assert "declined" in event.error
    assert event.error_code in {"card_declined", "insufficient_funds", "expired_card"}
    assert event.event_id == follow_up_id("payments", sent.event_id, "payment:failed", 0)
    assert event.metadata.correlation_id == str(sent.event_id)  # the request started the flow
    stored = await row(database, pid)
    assert (stored.error, stored.error_code, stored.transaction_id) == (event.error, event.error_code, None)


async def test_redelivered_request_is_charged_once_and_its_result_keeps_one_event_id(
    broker: InMemoryBroker, database: Database
) -> None:
    gateway = RecordingGateway()
    pid = uid("redelivered")
    sent = request(pid)
    async with running(broker, database, gateway) as (publisher, runner):
        await publisher.publish(sent)
        await publisher.publish(sent)  # the same event again (a redelivery)
        await publisher.publish(request(pid))  # a second request for the same payment (new event id)
        await until(lambda: _status(database, pid, "processed"), "the payment processed")
        await until(lambda: all_payment_records_done(broker, runner), "every request handled")
        await asyncio.sleep(0.2)  # room for a (wrong) second charge by the other worker
    assert len(gateway.calls) == 1
    ids = {event.event_id for event in results(broker, pid)}
    assert ids == {follow_up_id("payments", sent.event_id, "payment:processed", 0)}


async def test_gateway_is_called_with_the_payment_id_as_idempotency_key(
    broker: InMemoryBroker, database: Database
) -> None:
    gateway = RecordingGateway()
    pid = uid("key")
    async with running(broker, database, gateway) as (publisher, _):
        await publisher.publish(request(pid, "1500.00"))
        await until(lambda: results(broker, pid), "payment:processed")
    assert gateway.calls == [(pid, Decimal("1500.00"), "EUR", pid)]


async def test_transient_gateway_errors_are_retried_until_the_charge_succeeds(
    broker: InMemoryBroker, database: Database
) -> None:
    gateway = RecordingGateway(unavailable_first=2)
    pid = uid("flaky")
    async with running(broker, database, gateway, workers=1) as (publisher, _):
        await publisher.publish(request(pid))
        await until(lambda: _status(database, pid, "processed"), "the payment processed")
    [event] = results(broker, pid)
    assert isinstance(event, PaymentProcessed)
    assert len(gateway.calls) == 3
    assert (await row(database, pid)).attempts == 3


async def test_gateway_unavailable_beyond_the_retry_bound_fails_the_payment(
    broker: InMemoryBroker, database: Database
) -> None:
    gateway = RecordingGateway(unavailable_first=100)
    pid = uid("down")
    async with running(broker, database, gateway, workers=1) as (publisher, _):
        await publisher.publish(request(pid))
        await until(lambda: _status(database, pid, "failed"), "the payment failed")
    [event] = results(broker, pid)
    assert isinstance(event, PaymentFailed)
    assert event.error_code == "gateway_unavailable"
    assert "after 3 attempts" in event.error
    assert "simulated outage" in event.error
    assert len(gateway.calls) == FAST_WORKERS.max_charge_attempts


async def test_stuck_charging_row_is_reclaimed_after_the_lease_and_charged_idempotently(
    broker: InMemoryBroker, database: Database
) -> None:
    gateway = SimulatedGateway(latency_s=0.0, failure_rate=0.0, seed=9)
    stuck, fresh = uid("stuck"), uid("fresh")
    source = uuid.uuid4()
    # the dead worker had charged the gateway already: the re-charge must return the same transaction
    first = await gateway.charge(stuck, Decimal("75.00"), "EUR", idempotency_key=stuck)
    now = datetime.now(UTC).replace(tzinfo=None)
    async with database.begin() as conn:
        for pid, updated in ((stuck, now - timedelta(hours=1)), (fresh, now)):
            await conn.execute(
                text(
                    "INSERT INTO payments_queue (payment_id, session_id, user_id, amount, currency, priority_rank,"
                    " status, attempts, correlation_id, source_event_id, enqueued_at, updated_at) VALUES"
                    " (:p, 's', 'u', 75, 'EUR', 1, 'charging', 1, 'flow-7', :src, :t, :t)"
                ),
                {"p": pid, "src": str(source if pid == stuck else uuid.uuid4()), "t": updated},
            )
    options = WorkerOptions(poll_s=0.05, lease_s=30.0)
    try:
        async with running(broker, database, gateway, options=options) as (_, _runner):
            await until(lambda: _status(database, stuck, "processed"), "the stuck row reclaimed and processed")
        [event] = results(broker, stuck)
        assert isinstance(event, PaymentProcessed)
        assert event.transaction_id == first.transaction_id
        assert gateway.charges == 1  # charged once in all
        assert event.event_id == follow_up_id("payments", source, "payment:processed", 0)
        assert event.metadata.causation_id == source
        assert event.metadata.correlation_id == "flow-7"
        assert (await row(database, fresh)).status == "charging"  # its lease has not run out
        assert results(broker, fresh) == []
    finally:
        await delete_rows(database, fresh)


async def test_queue_depth_counts_rows_by_state_and_claims_high_priority_first(
    broker: InMemoryBroker, tmp_path: Path
) -> None:
    gate = asyncio.Event()
    gateway = RecordingGateway(gate=gate)
    blocker, normal_a, normal_b, high = uid("blocker"), uid("a"), uid("b"), uid("high")
    async with migrated_database(f"sqlite:///{tmp_path}/depth.sqlite", MIGRATIONS) as database:
        async with running(broker, database, gateway, workers=1) as (publisher, _):
            await publisher.publish(request(blocker, "5.00"))
            await until(lambda: gateway.calls, "the only worker busy with the blocker")
            for pid, amount in ((normal_a, "10.00"), (normal_b, "20.00"), (high, "1000.01")):
                await publisher.publish(request(pid, amount))
            await until(lambda: all_rows(database, 4), "four rows")
            assert await queue_depth(database) == {
                "pending_high": 1,
                "pending_normal": 2,
                "charging": 1,
                "processed": 0,
                "failed": 0,
            }
            gate.set()
            await until(lambda: all_processed(database, 4), "every payment processed")
        order = [call[0] for call in gateway.calls]
        # a and b arrive through different partitions: their relative order is the order they were enqueued
        assert order[:2] == [blocker, high]
        assert sorted(order[2:]) == sorted([normal_a, normal_b])
        depth = await queue_depth(database)
        assert (depth["processed"], depth["pending_normal"], depth["charging"]) == (4, 0, 0)


async def all_rows(database: Database, count: int) -> bool:
    async with database.begin() as conn:
        return bool((await conn.execute(text("SELECT COUNT(*) FROM payments_queue"))).scalar_one() == count)


async def all_processed(database: Database, count: int) -> bool:
    return (await queue_depth(database))["processed"] == count


async def test_idle_workers_stop_promptly(broker: InMemoryBroker, tmp_path: Path) -> None:
    slow_poll = WorkerOptions(poll_s=30.0)
    async with migrated_database(f"sqlite:///{tmp_path}/idle.sqlite", MIGRATIONS) as database:
        async with running(broker, database, RecordingGateway(), workers=3, options=slow_poll) as (_, runner):
            await until(runner.assigned.is_set, "the assignment")
            await asyncio.sleep(0.1)
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 1.0


# -- priority ---------------------------------------------------------------------------


async def test_high_priority_payment_is_processed_while_10000_normal_ones_wait(
    broker: InMemoryBroker, postgres: Database
) -> None:
    """The backlog is written as the handler writes it, in one batch: draining 10 000 records through
    per-record transactions takes 20-40 s on this machine. The Kafka path (a high request behind a
    backlog in its partition) is tests/integration/test_group_payments_kafka.py."""
    run = uid("prio")
    backlog = 10_000
    gateway = RecordingGateway(inner=SimulatedGateway(latency_s=0.02, failure_rate=0.0, seed=1))
    high = f"{run}-high"
    start = datetime.now(UTC).replace(tzinfo=None)
    rows = [
        {
            "p": f"{run}-n{index:05d}",
            "src": str(uuid.uuid4()),
            "t": start + timedelta(microseconds=index),
        }
        for index in range(backlog)
    ]
    try:
        async with postgres.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO payments_queue (payment_id, session_id, user_id, amount, currency, priority_rank,"
                    " status, attempts, correlation_id, source_event_id, enqueued_at, updated_at) VALUES"
                    " (:p, 's', 'u', 100, 'EUR', 1, 'pending', 0, NULL, :src, :t, :t)"
                ),
                rows,
            )

        async def waiting_normal() -> int:
            async with postgres.begin() as conn:
                sql = "SELECT COUNT(*) FROM payments_queue WHERE payment_id LIKE :run AND status = 'pending'"
                return int((await conn.execute(text(sql), {"run": f"{run}-n%"})).scalar_one())

        async with running(broker, postgres, gateway, workers=2) as (publisher, _):
            await until(lambda: len(gateway.calls) >= 10, "the workers busy with the backlog")
            charged_before = len(gateway.calls)
            await publisher.publish(request(high, "1500.00"))
            await until(lambda: _status(postgres, high, "processed"), "the high-priority payment processed")
            waiting = await waiting_normal()
        assert waiting >= 9_000, f"only {waiting} normal payments still waited"
        order = [call[0] for call in gateway.calls]
        # claimed as soon as a worker was free: at most one charge per worker after it was published
        assert order.index(high) <= charged_before + 2
        [event] = results(broker, high)
        assert isinstance(event, PaymentProcessed)
    finally:
        await delete_rows(postgres, f"{run}-%")


async def test_high_priority_request_behind_a_published_backlog_in_its_partition_is_not_starved(
    broker: InMemoryBroker, database: Database
) -> None:
    """The handler only enqueues, so the partition drains fast and the high request jumps the charge queue."""
    run = uid("behind")
    backlog = 600
    gateway = RecordingGateway(inner=SimulatedGateway(latency_s=0.05, failure_rate=0.0, seed=1))
    high = f"{run}-high"
    try:
        async with EventPublisher(transport=broker.producer()) as loader:
            for index in range(backlog):
                await loader.send(request(f"{run}-n{index:04d}", "100.00"))
            await loader.send(request(high, "1500.00"))  # behind about 100 normal ones in its partition
            await loader.flush()
        async with running(broker, database, gateway, workers=1):
            await until(lambda: _status(database, high, "processed"), "the high-priority payment processed")
            charged_normal = sum(1 for call in gateway.calls if call[0] != high)
        assert charged_normal < backlog // 2, f"{charged_normal} normal payments were charged first"
    finally:
        await delete_rows(database, f"{run}-%")
