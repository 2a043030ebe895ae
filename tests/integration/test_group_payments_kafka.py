"""The ``payments`` group end to end: the embedded broker, PostgreSQL, ``run_groups``.

A high-priority request published behind a backlog of normal ones (in its
partition, too) is charged while most of the backlog still waits: the handler
only enqueues, the workers charge the most urgent row first.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal

import pytest
from sqlalchemy import text

from consumers import PROCESSED_EVENTS_MIGRATION, Database, ProcessedEventStore, follow_up_id, run_groups
from consumers._cache import MemoryCache
from consumers._resources import GroupSettings, Resources
from consumers.groups.payments import (
    MIGRATIONS,
    ChargeResult,
    PaymentDeclinedError,
    SimulatedGateway,
    WorkerOptions,
    build,
)
from infra._reader import read_all
from infra._settings import Settings
from producers import EventPublisher
from schemas import PaymentFailed, PaymentProcessed, PaymentProcessRequired
from tests.harness import POSTGRES_URL

pytestmark = pytest.mark.integration

BACKLOG = 2_000


class DecliningGateway:
    """The simulated gateway (20 ms a call), except that payment ids ending in ``-decline`` are declined."""

    def __init__(self) -> None:
        self.inner = SimulatedGateway(latency_s=0.02, failure_rate=0.0, seed=4)
        self.order: list[str] = []

    async def charge(self, payment_id: str, amount: Decimal, currency: str, *, idempotency_key: str) -> ChargeResult:
        self.order.append(payment_id)
        if payment_id.endswith("-decline"):
            await asyncio.sleep(0.02)
            raise PaymentDeclinedError("insufficient funds", code="insufficient_funds")
        return await self.inner.charge(payment_id, amount, currency, idempotency_key=idempotency_key)


def request(payment_id: str, amount: str) -> PaymentProcessRequired:
    return PaymentProcessRequired.model_validate(
        {"payment_id": payment_id, "session_id": f"s-{payment_id}", "user_id": f"u-{payment_id}", "amount": amount}
    )


async def statuses(database: Database, run: str) -> dict[str, str]:
    async with database.begin() as conn:
        rows = await conn.execute(
            text("SELECT payment_id, status FROM payments_queue WHERE payment_id LIKE :run"), {"run": f"{run}-%"}
        )
        return {str(payment_id): str(status) for payment_id, status in rows}


async def test_a_payment_over_1000_is_processed_while_a_backlog_of_normal_ones_waits(settings: Settings) -> None:
    database = Database(POSTGRES_URL)
    await database.migrate([PROCESSED_EVENTS_MIGRATION, *MIGRATIONS])
    run = f"itest-{uuid.uuid4().hex[:10]}"
    high, declined = request(f"{run}-high", "1500.00"), request(f"{run}-decline", "1200.00")
    gateway = DecliningGateway()
    resources = Resources(database=database, cache=MemoryCache(), settings=GroupSettings(payment_workers=1))
    group = build(resources, gateway=gateway, options=WorkerOptions(poll_s=0.05))
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_groups(
            [group],
            connection=settings.connection(),
            publisher_config=settings.publisher_config("test"),
            consumer_config=settings.consumer_config(),
            runtime_config=settings.runtime_config(backoff_initial_s=0.01, concurrency=6),
            stop=stop,
            store=ProcessedEventStore(database),
            started=started,
        )
    )
    try:
        await asyncio.wait_for(started.wait(), timeout=30)
        async with EventPublisher(connection=settings.connection(), config=settings.publisher_config("t")) as pub:
            for index in range(BACKLOG):
                await pub.send(request(f"{run}-n{index:04d}", "100.00"))
            await pub.send(high)  # behind ~330 normal requests in its partition
            await pub.send(declined)
            await pub.flush()
        deadline = time.monotonic() + 25
        while True:
            now = await statuses(database, run)
            if now.get(high.payment_id) == "processed" and now.get(declined.payment_id) == "failed":
                break
            assert time.monotonic() < deadline, "the high-priority payments were not done in time"
            await asyncio.sleep(0.05)
        charged_normal = sum(1 for payment_id in gateway.order if payment_id.startswith(f"{run}-n"))
        waiting = BACKLOG - sum(1 for pid, status in now.items() if pid.startswith(f"{run}-n") and status != "pending")
    finally:
        stop.set()
        await task
    try:
        assert charged_normal < BACKLOG // 2, f"{charged_normal} normal payments were charged before the high ones"
        assert waiting > BACKLOG // 2
        results = {
            record.event.payment_id: record.event
            async for record in read_all(settings.connection(), ["payment"])
            if isinstance(record.event, PaymentProcessed | PaymentFailed)
            and record.event.payment_id in {high.payment_id, declined.payment_id}
        }
        processed, failed = results[high.payment_id], results[declined.payment_id]
        assert isinstance(processed, PaymentProcessed)
        assert processed.transaction_id.startswith("txn_")
        assert processed.event_id == follow_up_id("payments", high.event_id, "payment:processed", 0)
        assert processed.metadata.causation_id == high.event_id
        assert isinstance(failed, PaymentFailed)
        assert (failed.error, failed.error_code) == ("insufficient funds", "insufficient_funds")
        assert failed.event_id == follow_up_id("payments", declined.event_id, "payment:failed", 0)
    finally:
        async with database.begin() as conn:
            await conn.execute(text("DELETE FROM payments_queue WHERE payment_id LIKE :run"), {"run": f"{run}-%"})
        await database.close()
