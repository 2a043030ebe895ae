"""The original design document's examples, rewritten in Python against the ``EventBus`` facade and run.

Each example keeps its shape (a use case publishing, a screen subscribing and unsubscribing, a background
job reacting); the work the original did in listeners is done here by the consumer groups, running on the
same in-memory broker, and the facade's subscriptions see their follow-up events.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from consumers import (
    ConsumerGroup,
    Database,
    GroupSettings,
    MemoryCache,
    OutboxRelay,
    ProcessedEventStore,
    RelayConfig,
    Resources,
    RuntimeConfig,
)
from consumers.groups import analytics, cache, payments
from consumers.groups import credits as credit
from consumers.groups.payments import SimulatedGateway, WorkerOptions
from consumers.testing import InMemoryBroker
from infra._composition import marketplace_migrations
from infra.bus import EventBus
from producers import EventPublisher, Outbox, PublishResult
from schemas import (
    CacheCoachDataRefreshed,
    CoachStatusChanged,
    Event,
    PaymentFailed,
    PaymentProcessed,
    SessionCreated,
    SystemErrorEvent,
    UserCreditsUpdated,
)
from schemas.errors import FatalHandlerError
from tests.harness import migrated_database, running_group, until

pytestmark = pytest.mark.integration

RUNTIME = RuntimeConfig(backoff_initial_s=0.01, commit_interval_s=0.05, fetch_timeout_s=0.05, max_attempts=1)


@dataclass
class Marketplace:
    """One in-memory broker, the facade on it, a SQLite database with every group's tables."""

    broker: InMemoryBroker
    bus: EventBus
    database: Database
    resources: Resources
    stack: AsyncExitStack

    async def run(self, group: ConsumerGroup) -> None:
        """Run ``group`` on the broker until the test ends."""
        store = ProcessedEventStore(self.database)
        await self.stack.enter_async_context(
            running_group(group, self.broker, RUNTIME, store=store, assigned_timeout_s=10)
        )


@pytest.fixture
async def market(tmp_path: Path) -> AsyncIterator[Marketplace]:
    broker = InMemoryBroker()
    async with AsyncExitStack() as stack:
        database = await stack.enter_async_context(
            migrated_database(f"sqlite:///{tmp_path}/market.sqlite", marketplace_migrations()[1:])  # [0]: processed
        )
        bus = await stack.enter_async_context(EventBus.in_memory(broker, service="original-examples"))
        resources = Resources(database=database, cache=MemoryCache(), settings=GroupSettings())
        yield Marketplace(broker, bus, database, resources, stack)


def uid(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


# -- 2. sessions: BookSessionUseCase and the SessionBooking screen --------------------------------------


class SessionServiceError(Exception):
    """The booking could not be stored."""


@dataclass
class BookSessionUseCase:
    """``BookSessionUseCase.execute``: store the session, publish ``session:created``; on error
    ``session:creation_failed``, then raise."""

    bus: EventBus
    fail_with: str | None = None

    def _create_session(self, data: dict[str, Any]) -> dict[str, Any]:
        if self.fail_with:
            raise SessionServiceError(self.fail_with)
        return {**data, "id": data["session_id"]}

    async def execute(self, data: dict[str, Any]) -> dict[str, Any]:
        try:
            session = self._create_session(data)
            await self.bus.publish("session:created", data)
        except SessionServiceError as exc:
            await self.bus.publish("session:creation_failed", {**_booking_keys(data), "error": str(exc)})
            raise
        return session


def _booking_keys(data: dict[str, Any]) -> dict[str, Any]:
    keys = ("session_id", "user_id", "coach_id", "scheduled_at", "session_type")
    return {key: data[key] for key in keys}


@dataclass
class SessionBooking:
    """The ``SessionBooking`` component: subscribes on mount, unsubscribes on unmount."""

    bus: EventBus
    status: str = "idle"
    error: str | None = None
    unsubscribes: list[Any] = field(default_factory=list)

    def mount(self) -> None:
        self.unsubscribes.append(self.bus.subscribe("session:created", lambda event: self._set("success")))
        self.unsubscribes.append(self.bus.subscribe("session:creation_failed", self._failed))

    def _set(self, status: str) -> None:
        self.status = status

    def _failed(self, event: Event) -> None:
        self.status, self.error = "error", getattr(event, "error", None)

    def unmount(self) -> None:
        for unsubscribe in self.unsubscribes:
            unsubscribe()


def booking_data(user: str, coach: str = "c-1", cost: int = 10) -> dict[str, Any]:
    return {
        "session_id": uid("s"),
        "coach_id": coach,
        "user_id": user,
        "scheduled_at": datetime.now(UTC) + timedelta(days=2),
        "session_type": "Mentoría Individual",
        "cost_credits": cost,
    }


async def test_book_session_use_case_and_the_session_booking_screen(market: Marketplace) -> None:
    screen = SessionBooking(market.bus)
    screen.mount()
    await BookSessionUseCase(market.bus).execute(booking_data("u-1"))
    await until(lambda: screen.status == "success", "the screen to show the booking")

    with pytest.raises(SessionServiceError):
        await BookSessionUseCase(market.bus, fail_with="el coach no está disponible").execute(booking_data("u-1"))
    await until(lambda: screen.status == "error", "the screen to show the failure")
    assert screen.error == "el coach no está disponible"

    screen.unmount()
    assert market.bus.subscription_count == 0


# -- 4. coaches: ReviewService and CoachMonitoring -------------------------------------------------------


async def test_review_service_publishes_the_rating_and_coach_monitoring_follows_statuses(market: Marketplace) -> None:
    statuses: dict[str, str] = {}

    def monitor(event: Event) -> None:
        if isinstance(event, CoachStatusChanged):
            statuses[event.coach_id] = event.new_status

    unsubscribe = market.bus.subscribe("coach:status_changed", monitor)
    coach = uid("coach")
    result: PublishResult = await market.bus.publish(
        "coach:rating_updated", {"coach_id": coach, "new_rating": 4.8, "review_count": 12}
    )
    await market.bus.publish("coach:status_changed", {"coach_id": coach, "old_status": "online", "new_status": "busy"})
    await until(lambda: statuses.get(coach) == "busy", "the monitor to show the coach busy")
    [rating] = await market.bus.history(1, type="coach:rating_updated")
    assert (rating.event_id, getattr(rating, "new_rating", None)) == (result.event_id, 4.8)
    unsubscribe()


# -- 5. PaymentProcessor: enqueue, processed or failed ------------------------------------------------


async def test_payment_processor_enqueues_and_a_result_follows_for_every_payment(market: Marketplace) -> None:
    gateway = SimulatedGateway(latency_s=0.0, failure_rate=0.0)
    await market.run(payments.build(market.resources, gateway=gateway, options=WorkerOptions(poll_s=0.05)))
    outcomes: dict[str, str] = {}

    def record(event: Event) -> None:
        if isinstance(event, PaymentProcessed | PaymentFailed):
            outcomes[event.payment_id] = event.event_type

    market.bus.subscribe("payment:*", record)
    wanted = {}
    for amount in ("49.90", "1250.00"):  # the second is high priority (over 1000)
        payment_id = uid("pay")
        wanted[payment_id] = "payment:processed"
        await market.bus.publish(
            "payment:process_required",
            {"payment_id": payment_id, "session_id": uid("s"), "user_id": "u-pay", "amount": Decimal(amount)},
        )
    await until(lambda: outcomes == wanted, "a processed result for each payment")


# -- project use cases: credits, cache, analytics ----------------------------------------------------------


async def test_credits_are_deducted_when_a_session_completes_and_the_user_is_told(market: Marketplace) -> None:
    await market.run(credit.build(market.resources))
    user = uid("u")
    async with EventPublisher(transport=market.broker.producer()) as publisher:  # the credits admin service
        await credit.grant_credits(market.database, publisher, user, 30)
    updates: list[int] = []
    market.bus.subscribe(
        "user:credits_updated",
        lambda event: (
            updates.append(event.balance) if isinstance(event, UserCreditsUpdated) and event.user_id == user else None
        ),
    )
    await market.bus.publish(
        "session:completed",
        {
            "session_id": uid("s"),
            "coach_id": "c-1",
            "user_id": user,
            "cost_credits": 10,
            "completed_at": datetime.now(UTC),
            "duration_minutes": 60,
        },
    )
    await until(lambda: 20 in updates, "the credits update after the completion")
    assert await credit.get_balance(market.database, user) == 20


async def test_a_profile_update_invalidates_the_coach_cache_and_announces_the_refresh(market: Marketplace) -> None:
    await market.resources.cache.set(cache.coach_profile_key("c-cached"), b"stale")
    await market.run(cache.build(market.resources))
    refreshed: list[CacheCoachDataRefreshed] = []
    market.bus.subscribe(
        "cache:coach_data_refreshed", lambda e: refreshed.append(e) if isinstance(e, CacheCoachDataRefreshed) else None
    )
    await market.bus.publish("coach:profile_updated", {"coach_id": "c-cached", "changed_fields": ["bio"]})
    await until(lambda: len(refreshed) == 1, "the refresh announcement")
    assert refreshed[0].coach_id == "c-cached"
    assert await market.resources.cache.get(cache.coach_profile_key("c-cached")) is None


async def test_analytics_tracks_every_booking(market: Marketplace) -> None:
    await market.run(analytics.build(market.resources))
    for _ in range(3):
        await market.bus.publish("session:created", booking_data(uid("u")))

    async def counted() -> bool:
        return (await analytics.summary(market.database)).sessions_booked == 3

    await until(counted, "three bookings counted")


# -- error handling: a failing listener becomes system:error ---------------------------------------------


async def test_a_failing_listener_becomes_a_system_error_event_the_bus_can_watch(market: Marketplace) -> None:
    listener = ConsumerGroup("session-listener")

    @listener.handler("session:created")
    async def process(event: Event, ctx: Any) -> None:
        raise FatalHandlerError(f"cannot process {event.event_type}")

    await market.run(listener)
    errors: list[SystemErrorEvent] = []
    market.bus.subscribe("system:error", lambda e: errors.append(e) if isinstance(e, SystemErrorEvent) else None)
    created = await market.bus.publish("session:created", booking_data("u-err"))
    await until(lambda: len(errors) == 1, "the dead letter of the failing listener")
    assert (errors[0].consumer_group, errors[0].original_event_type) == ("session-listener", "session:created")
    assert errors[0].original_event_id == created.event_id
    assert "cannot process session:created" in errors[0].error_message


# -- the same use cases through the transactional outbox ----------------------------------------------------
# The service's row and its event commit in one transaction; the relay sends the event once it committed.

EXAMPLE_TABLES = (
    "CREATE TABLE IF NOT EXISTS example_sessions (session_id TEXT PRIMARY KEY, user_id TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS example_reviews (review_id TEXT PRIMARY KEY, coach_id TEXT NOT NULL, stars INT)",
    "CREATE TABLE IF NOT EXISTS example_payments (payment_id TEXT PRIMARY KEY, amount TEXT NOT NULL)",
)


@pytest.fixture
async def relayed(market: Marketplace) -> AsyncIterator[Outbox]:
    """The market with the examples' tables, an outbox, and a relay sending to the market's broker."""
    async with market.database.begin() as conn:
        for statement in EXAMPLE_TABLES:
            await conn.execute(text(statement))
    publisher = await market.stack.enter_async_context(EventPublisher(transport=market.broker.producer()))
    relay = OutboxRelay(market.database, publisher=publisher, config=RelayConfig(poll_interval_s=0.02))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield Outbox()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


@dataclass
class BookSessionWithOutbox:
    """``BookSessionUseCase`` on the outbox: the session row and ``session:created`` commit together; a
    failure rolls both back, and ``session:creation_failed`` is written on its own."""

    database: Database
    outbox: Outbox
    fail_with: str | None = None

    def _check_slot(self) -> None:
        if self.fail_with:
            raise SessionServiceError(self.fail_with)

    async def execute(self, data: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self.database.begin() as conn:
                await conn.execute(
                    text("INSERT INTO example_sessions (session_id, user_id) VALUES (:s, :u)"),
                    {"s": data["session_id"], "u": data["user_id"]},
                )
                await self.outbox.publish(conn, "session:created", data)
                self._check_slot()  # found out after writing: nothing of this transaction survives
        except SessionServiceError as exc:
            async with self.database.begin() as conn:
                await self.outbox.publish(conn, "session:creation_failed", {**_booking_keys(data), "error": str(exc)})
            raise
        return {**data, "id": data["session_id"]}


async def _stored(database: Database, table: str, key: str, value: str) -> int:
    query = text(f"SELECT count(*) FROM {table} WHERE {key} = :v")  # noqa: S608 - the tests' own names
    async with database.begin() as conn:
        return int((await conn.execute(query, {"v": value})).scalar_one())


async def test_booking_through_the_outbox_commits_row_and_event_together_and_a_failure_sends_neither(
    market: Marketplace, relayed: Outbox
) -> None:
    screen = SessionBooking(market.bus)
    screen.mount()
    booked = booking_data("u-outbox")
    await BookSessionWithOutbox(market.database, relayed).execute(booked)
    await until(lambda: screen.status == "success", "the screen to show the booking")
    assert await _stored(market.database, "example_sessions", "session_id", booked["session_id"]) == 1

    refused = booking_data("u-outbox")
    with pytest.raises(SessionServiceError):
        await BookSessionWithOutbox(market.database, relayed, fail_with="sin disponibilidad").execute(refused)
    await until(lambda: screen.status == "error", "the screen to show the failure")
    assert screen.error == "sin disponibilidad"
    assert await _stored(market.database, "example_sessions", "session_id", refused["session_id"]) == 0
    created = [e for e in await market.bus.history(10, type="session:created") if isinstance(e, SessionCreated)]
    assert [e.session_id for e in created] == [booked["session_id"]], "the rolled-back booking was never announced"
    screen.unmount()


async def test_review_through_the_outbox_publishes_the_rating_with_the_review_row(
    market: Marketplace, relayed: Outbox
) -> None:
    coach, review = uid("coach"), uid("review")
    async with market.database.begin() as conn:
        await conn.execute(
            text("INSERT INTO example_reviews (review_id, coach_id, stars) VALUES (:r, :c, 5)"),
            {"r": review, "c": coach},
        )
        event = await relayed.publish(
            conn, "coach:rating_updated", {"coach_id": coach, "new_rating": 4.9, "review_count": 13}
        )

    async def rated() -> bool:
        return any(e.event_id == event.event_id for e in await market.bus.history(20, type="coach:rating_updated"))

    await until(rated, "the rating on the coach topic")
    assert await _stored(market.database, "example_reviews", "review_id", review) == 1


async def test_payment_enqueued_through_the_outbox_is_processed(market: Marketplace, relayed: Outbox) -> None:
    gateway = SimulatedGateway(latency_s=0.0, failure_rate=0.0)
    await market.run(payments.build(market.resources, gateway=gateway, options=WorkerOptions(poll_s=0.05)))
    outcomes: list[str] = []
    market.bus.subscribe("payment:processed", lambda e: outcomes.append(getattr(e, "payment_id", "")))
    payment_id = uid("pay")
    async with market.database.begin() as conn:
        await conn.execute(
            text("INSERT INTO example_payments (payment_id, amount) VALUES (:p, '75.00')"), {"p": payment_id}
        )
        await relayed.publish(
            conn,
            "payment:process_required",
            {"payment_id": payment_id, "session_id": uid("s"), "user_id": "u-pay", "amount": Decimal("75.00")},
        )
    await until(lambda: outcomes == [payment_id], "the payment processed")
