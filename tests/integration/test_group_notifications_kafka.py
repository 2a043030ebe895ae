"""The ``notifications`` group end to end: the embedded broker, PostgreSQL, ``run_groups``."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import pytest

from consumers import PROCESSED_EVENTS_MIGRATION, Database, ProcessedEventStore, run_groups
from consumers._cache import MemoryCache
from consumers._resources import GroupSettings, Resources
from consumers.groups.notifications import MIGRATIONS, build, list_notifications
from infra._settings import Settings
from producers import EventPublisher
from schemas import NotificationType, SessionCreated
from tests.harness import POSTGRES_URL

pytestmark = pytest.mark.integration


async def test_a_booking_on_kafka_notifies_the_client_and_the_coach(settings: Settings) -> None:
    database = Database(POSTGRES_URL)
    await database.migrate([PROCESSED_EVENTS_MIGRATION, *MIGRATIONS])
    key = uuid.uuid4().hex[:10]
    event = SessionCreated(
        session_id=f"session-{key}",
        coach_id=f"coach-{key}",
        user_id=f"user-{key}",
        scheduled_at=datetime(2025, 6, 2, 14, 0, tzinfo=UTC),
        session_type="Mentoría Individual",
        cost_credits=3,
        coach_name="Ada Lovelace",
        client_name="Grace Hopper",
    )
    group = build(Resources(database=database, cache=MemoryCache(), settings=GroupSettings()))
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_groups(
            [group],
            connection=settings.connection(),
            publisher_config=settings.publisher_config("test"),
            consumer_config=settings.consumer_config(),
            runtime_config=settings.runtime_config(backoff_initial_s=0.01),
            stop=stop,
            store=ProcessedEventStore(database),
            started=started,
        )
    )
    try:
        await asyncio.wait_for(started.wait(), timeout=30)
        async with EventPublisher(connection=settings.connection(), config=settings.publisher_config("t")) as pub:
            await pub.publish(event)
        deadline = time.monotonic() + 20
        while not (await list_notifications(database, event.coach_id)):
            assert time.monotonic() < deadline, "the booking was not notified in time"
            await asyncio.sleep(0.1)
        [client] = await list_notifications(database, event.user_id)
        [coach] = await list_notifications(database, event.coach_id)
    finally:
        stop.set()
        await task
        await database.close()
    assert client.notification_type is NotificationType.SESSION_CONFIRMED
    assert client.body == (
        "Tu sesión de Mentoría Individual con Ada Lovelace está confirmada para el 2025-06-02 14:00 UTC."
    )
    assert coach.notification_type is NotificationType.NEW_SESSION_REQUEST
    assert coach.title == "Nueva solicitud de sesión"
