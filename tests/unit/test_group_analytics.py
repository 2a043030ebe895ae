"""The ``analytics`` group on the fake broker, over SQLite and PostgreSQL: every event type is
counted once per event id in minute, hour and day buckets of its ``occurred_at`` even when every
record is delivered twice (invariant 4); ``session:created`` is tracked as a booked session;
``summary`` and ``eventbus analytics summary`` report them.

Events carry an ``occurred_at`` on a random day centuries ahead, so rows of other runs in the
shared PostgreSQL database never fall in a test's window.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from consumers import ConsumerGroup, Database, ProcessedEventStore
from consumers._cache import MemoryCache
from consumers._resources import GroupSettings, Resources
from consumers.groups.analytics import BUCKETS, MIGRATIONS, Bucket, bucket_start, build, counts, summary
from infra._cli_analytics import analytics as cli
from producers import EventPublisher
from schemas import CATALOG, Event, SessionCreated
from tests.events_factory import example_event
from tests.harness import migrated_database, new_broker, run_until_drained

# -- harness ------------------------------------------------------------------------------------


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with migrated_database(database_url, MIGRATIONS) as value:
        yield value


def analytics_group(database: Database) -> ConsumerGroup:
    return build(Resources(database=database, cache=MemoryCache(), settings=GroupSettings()))


async def count_published(events: list[Event], database: Database, *, twice: bool = True) -> None:
    """Publish ``events`` (each twice: a duplicate delivery of the same record content) on a fresh
    fake broker and run the group until every record is done."""
    broker = new_broker()
    group = analytics_group(database)
    async with EventPublisher(transport=broker.producer()) as publisher:
        await publisher.publish_many(events + events if twice else events)
        await run_until_drained(group, broker, publisher, store=ProcessedEventStore(database), timeout_s=30.0)


def far_day() -> datetime:
    """Midnight (UTC) of a random day between the years 2100 and about 8900."""
    return datetime(2100, 1, 1, tzinfo=UTC) + timedelta(days=random.randrange(2_500_000))


def catalog_events(day: datetime) -> list[Event]:
    """1-3 events of every catalog type, spread over minutes and hours of ``day``, one on the next day."""
    events: list[Event] = []
    for index, event_type in enumerate(CATALOG.event_types):
        for n in range(index % 3 + 1):
            at = day + timedelta(hours=n % 2, minutes=(index + n) % 3, seconds=7 * n + 1)
            events.append(example_event(event_type, metadata={"occurred_at": at}))
    events.append(example_event("session:created", metadata={"occurred_at": day + timedelta(days=1, hours=5)}))
    return events


def expected(events: list[Event], bucket: Bucket) -> dict[tuple[datetime, str], int]:
    return dict(Counter((bucket_start(e.metadata.occurred_at, bucket), e.event_type) for e in events))


# -- the group ----------------------------------------------------------------------------------


def test_bucket_start_truncates_in_utc() -> None:
    at = datetime(2025, 6, 2, 23, 35, 10, 5, tzinfo=timezone(timedelta(hours=-5)))  # 04:35:10 UTC the next day
    assert bucket_start(at, "minute") == datetime(2025, 6, 3, 4, 35)  # noqa: DTZ001 - naive UTC
    assert bucket_start(at, "hour") == datetime(2025, 6, 3, 4)  # noqa: DTZ001
    assert bucket_start(at, "day") == datetime(2025, 6, 3)  # noqa: DTZ001


async def test_every_type_is_counted_once_per_event_id_in_each_bucket(database: Database) -> None:
    """Invariant 4: publishing every event twice counts each once, per minute, hour and day."""
    day = far_day()
    events = catalog_events(day)

    await count_published(events, database)

    window = {"since": day, "until": day + timedelta(days=2)}
    for bucket in BUCKETS:
        assert await counts(database, bucket, **window) == expected(events, bucket), bucket
    per_day = await counts(database, "day", **window)
    naive_day = day.replace(tzinfo=None)
    assert sum(per_day.values()) == len(events)
    assert {event_type for (start, event_type) in per_day if start == naive_day} == set(CATALOG.event_types)


async def test_a_replayed_event_is_not_counted_again(database: Database) -> None:
    """A later delivery of an already counted event (a replay, a rewind) changes no count."""
    day = far_day()
    events = [example_event("payment:failed", metadata={"occurred_at": day + timedelta(minutes=m)}) for m in (1, 2)]
    await count_published(events, database, twice=False)
    await count_published(events, database, twice=False)

    assert await counts(database, "hour", since=day, until=day + timedelta(days=1)) == {
        (day.replace(tzinfo=None), "payment:failed"): 2
    }


async def test_session_created_is_tracked_as_a_booked_session(database: Database) -> None:
    day = far_day()
    booked_at = day + timedelta(hours=3, minutes=4, seconds=5, microseconds=6)
    created = example_event(
        "session:created",
        session_id=f"s-{random.getrandbits(48):x}",
        coach_id="coach-9",
        user_id="user-9",
        session_type="video-call",
        metadata={"occurred_at": booked_at},
    )
    assert isinstance(created, SessionCreated)

    await count_published([created], database)

    async with database.begin() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT session_id, coach_id, user_id, session_type FROM analytics_session_booked"
                    " WHERE event_id = :e"
                ),
                {"e": str(created.event_id)},
            )
        ).all()
    assert [tuple(row) for row in rows] == [(created.session_id, "coach-9", "user-9", "video-call")]
    window = await summary(database, since=booked_at, until=booked_at + timedelta(seconds=1))
    assert window.sessions_booked == 1
    assert window.by_type == {"session:created": 1}


async def test_summary_since_counts_whole_minutes_from_the_minute_of_since(database: Database) -> None:
    """``summary(since=..., until=...)`` reads the minute buckets: ``since`` is rounded down to its
    minute, ``until`` (exclusive) up; sessions booked use the same window."""
    day = far_day()
    events = catalog_events(day)
    await count_published(events, database)

    since = day + timedelta(minutes=1, seconds=30)  # includes the minute 00:01
    until = day + timedelta(hours=1)  # excludes the hour 01:xx
    result = await summary(database, since=since, until=until)

    in_window = [e for e in events if day + timedelta(minutes=1) <= e.metadata.occurred_at < until]
    assert result.precision == "minute"
    assert result.by_type == dict(sorted(Counter(e.event_type for e in in_window).items()))
    assert result.total == len(in_window)
    assert result.sessions_booked == sum(e.event_type == "session:created" for e in in_window)
    assert result.since == (day + timedelta(minutes=1)).replace(tzinfo=None)
    assert result.as_dict()["since"] == (day + timedelta(minutes=1)).isoformat()


async def test_summary_of_all_time_reads_the_day_buckets(tmp_path: Path) -> None:
    async with migrated_database(f"sqlite:///{tmp_path}/all.sqlite", MIGRATIONS) as database:
        events = catalog_events(far_day())
        await count_published(events, database)
        result = await summary(database)

    assert result.precision == "day"
    assert (result.since, result.until) == (None, None)
    assert result.by_type == dict(sorted(Counter(e.event_type for e in events).items()))
    assert result.total == len(events)
    assert result.sessions_booked == sum(e.event_type == "session:created" for e in events)


# -- eventbus analytics summary ------------------------------------------------------------------


def test_cli_summary_prints_counts_as_a_table_or_json(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.sqlite"
    now = datetime.now(UTC)
    events = [
        example_event("session:created", metadata={"occurred_at": now - timedelta(hours=3)}),
        example_event("session:created", metadata={"occurred_at": now}),
        example_event("coach:rating_updated", metadata={"occurred_at": now}),
    ]

    async def seed() -> None:
        async with migrated_database(url, MIGRATIONS) as database:
            await count_published(events, database)

    asyncio.run(seed())
    env = {"EVENTBUS_DATABASE_URL": url}
    everything = CliRunner().invoke(cli, ["summary", "--json"], env=env)
    recent = CliRunner().invoke(cli, ["summary", "--since", "1h", "--json"], env=env)
    iso = CliRunner().invoke(cli, ["summary", "--since", (now - timedelta(hours=4)).isoformat(), "--json"], env=env)
    table = CliRunner().invoke(cli, ["summary", "--since", "2h"], env=env)
    invalid = CliRunner().invoke(cli, ["summary", "--since", "yesterday"], env=env)

    assert everything.exit_code == 0, everything.output
    body = json.loads(everything.stdout)
    assert body["by_type"] == {"coach:rating_updated": 1, "session:created": 2}
    assert (body["total"], body["sessions_booked"], body["precision"]) == (3, 2, "day")
    assert recent.exit_code == 0, recent.output
    assert json.loads(recent.stdout)["by_type"] == {"coach:rating_updated": 1, "session:created": 1}
    assert json.loads(recent.stdout)["precision"] == "minute"
    assert json.loads(iso.stdout)["sessions_booked"] == 2
    assert table.exit_code == 0, table.output
    assert "coach:rating_updated" in table.stdout
    assert "sessions booked: 1" in table.stdout
    assert invalid.exit_code == 2
    assert "yesterday" in invalid.stderr
