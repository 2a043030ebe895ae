"""The ``credits``, ``cache`` and ``analytics`` groups together on the embedded broker, with
PostgreSQL and Redis (``run_groups``); and ``eventbus credits grant`` publishing for real.

The end-to-end test is async; the CLI test is sync (the commands call ``asyncio.run``).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text

from consumers import PROCESSED_EVENTS_MIGRATION, Database, ProcessedEventStore, follow_up_id, run_groups
from consumers._cache import RedisCache
from consumers._resources import GroupSettings, Resources
from consumers.groups import analytics, cache
from consumers.groups import credits as credit
from infra._cli_credits import credits_group
from infra._cli_tail import tail
from infra._settings import Settings
from producers import EventPublisher
from schemas import CoachProfileUpdated, SessionCompleted, SessionCreated
from tests.harness import POSTGRES_URL, REDIS_URL, until

pytestmark = pytest.mark.integration


async def test_booking_completion_and_coach_update_flow_through_the_three_groups(settings: Settings) -> None:
    """A completed session (delivered twice) is deducted once; a profile update empties both Redis
    keys; analytics counts each source event once and also sees the other groups' follow-ups."""
    database = Database(POSTGRES_URL)
    await database.migrate([PROCESSED_EVENTS_MIGRATION, *credit.MIGRATIONS, *cache.MIGRATIONS, *analytics.MIGRATIONS])
    redis = RedisCache(REDIS_URL)
    store = ProcessedEventStore(database)
    key = uuid.uuid4().hex[:10]
    user, coach = f"user-{key}", f"coach-{key}"
    day = datetime(2100, 1, 1, tzinfo=UTC) + timedelta(days=uuid.uuid4().int % 2_500_000)
    at = {"occurred_at": day + timedelta(hours=10)}
    created = SessionCreated(
        session_id=f"session-{key}",
        coach_id=coach,
        user_id=user,
        scheduled_at=day + timedelta(hours=14),
        session_type="video-call",
        cost_credits=4,
        metadata=at,
    )
    completed = SessionCompleted(
        session_id=created.session_id,
        coach_id=coach,
        user_id=user,
        cost_credits=4,
        completed_at=day + timedelta(hours=15),
        metadata=at,
    )
    profile = CoachProfileUpdated(coach_id=coach, changed_fields=["bio"], metadata=at)
    for cache_key in cache.coach_keys(coach):
        await redis.set(cache_key, b"cached")
    resources = Resources(database=database, cache=redis, settings=GroupSettings())
    groups = [credit.build(resources), cache.build(resources), analytics.build(resources)]
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_groups(
            groups,
            connection=settings.connection(),
            publisher_config=settings.publisher_config("test"),
            consumer_config=settings.consumer_config(),
            runtime_config=settings.runtime_config(backoff_initial_s=0.01),
            stop=stop,
            store=store,
            started=started,
        )
    )
    grant_id = uuid.uuid4()
    try:
        await asyncio.wait_for(started.wait(), timeout=30)
        async with EventPublisher(connection=settings.connection(), config=settings.publisher_config("t")) as pub:
            await credit.grant_credits(database, pub, user, 10, grant_id=grant_id)
            await pub.publish_many([created, completed, completed, profile])

        follow_ups = [
            credit.grant_event_id(grant_id),
            follow_up_id("credits", completed.event_id, "user:credits_updated", 0),
            follow_up_id("cache", profile.event_id, "cache:coach_data_refreshed", 0),
        ]

        async def settled() -> bool:
            seen = [await store.seen("analytics", event_id) for event_id in follow_ups]
            return all(seen) and await credit.get_balance(database, user) == 6

        await until(settled, "the deduction, and analytics seeing every follow-up", interval_s=0.1)
        balance = await credit.get_balance(database, user)
        entries = await credit.ledger(database, user)
        cached = [await redis.get(cache_key) for cache_key in cache.coach_keys(coach)]
        counted = await analytics.counts(database, "day", since=day, until=day + timedelta(days=1))
        async with database.begin() as conn:
            booked = (
                await conn.execute(
                    text("SELECT session_id FROM analytics_session_booked WHERE event_id = :e"),
                    {"e": str(created.event_id)},
                )
            ).all()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        await redis.close()
        await database.close()

    assert balance == 6
    assert [(e.delta, e.balance_after) for e in entries] == [(10, 10), (-4, 6)]
    assert cached == [None, None]
    naive_day = day.replace(tzinfo=None)
    assert counted == {
        (naive_day, "session:created"): 1,
        (naive_day, "session:completed"): 1,
        (naive_day, "coach:profile_updated"): 1,
    }
    assert [row[0] for row in booked] == [created.session_id]


def test_cli_grant_publishes_the_update_and_is_idempotent_with_a_grant_id(settings: Settings, tmp_path: Path) -> None:
    env = {
        "EVENTBUS_BOOTSTRAP_SERVERS": settings.connection().bootstrap_servers,
        "EVENTBUS_PROFILE": settings.profile,
        "EVENTBUS_TOPIC_PREFIX": settings.connection().topic_prefix,
        "EVENTBUS_DATABASE_URL": f"sqlite:///{tmp_path}/cli.sqlite",
    }
    user, grant_id = f"user-{uuid.uuid4().hex[:10]}", str(uuid.uuid4())

    def cli(*args: str) -> Result:
        return CliRunner().invoke(credits_group, list(args), env=env)

    first = cli("grant", user, "25")
    keyed = cli("grant", user, "5", "--grant-id", grant_id, "--json")
    again = cli("grant", user, "5", "--grant-id", grant_id, "--json")
    balance = cli("balance", user)
    read = CliRunner().invoke(tail, ["user", "--from-beginning", "--max", "3", "--json", "--timeout", "10"], env=env)

    assert first.exit_code == 0, first.output
    assert first.stdout.strip() == "25"
    assert keyed.exit_code == 0, keyed.output
    assert json.loads(keyed.stdout) == {"user_id": user, "amount": 5, "balance": 30, "grant_id": grant_id}
    assert json.loads(again.stdout) == json.loads(keyed.stdout)
    assert balance.stdout.strip() == "30"
    assert read.exit_code == 0, read.output
    records = [json.loads(line) for line in read.stdout.splitlines()]
    assert [(r["event"]["delta"], r["event"]["balance"], r["event"]["reason"]) for r in records] == [
        (25, 25, "grant"),
        (5, 30, "grant"),
        (5, 30, "grant"),
    ]
    assert records[1]["event_id"] == records[2]["event_id"] == str(credit.grant_event_id(uuid.UUID(grant_id)))
    assert {r["event"]["metadata"]["service"] for r in records} == {"eventbus-cli"}
