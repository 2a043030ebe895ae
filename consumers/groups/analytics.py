"""The ``analytics`` group: counts of every event type per minute, hour and day, and booked sessions.

It handles every catalog event type (follow-ups and dead letters included). Each event is
counted once per event id (in the processed-events transaction, invariant 4: a redelivered
or replayed event is not counted twice), in the buckets of its ``metadata.occurred_at``
truncated to the minute, the hour and the day (UTC).

Tables (migration versions 30-39):

- ``analytics_counts(bucket, bucket_start, event_type, count)``, primary key
  ``(bucket, bucket_start, event_type)``; ``bucket`` is ``minute``, ``hour`` or ``day``;
  minute rows grow by one per type and minute (prune old ones by hand if that matters);
- ``analytics_session_booked(event_id PK, session_id, coach_id, user_id, session_type,
  booked_at)``: the original system's ``session_booked`` tracking, one row per
  ``session:created`` (``booked_at`` is the event's ``occurred_at``).

Example::

    group = build(resources)            # eventbus run analytics
    print((await summary(database, since=one_hour_ago)).by_type)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import DateTime, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from consumers import ConsumerGroup, Database, HandlerContext, Migration, Patience, Resources, RetryPolicy
from schemas import Event, SessionCreated

__all__ = [
    "BUCKETS",
    "GROUP_NAME",
    "MIGRATIONS",
    "AnalyticsSummary",
    "Bucket",
    "bucket_start",
    "build",
    "counts",
    "summary",
]

GROUP_NAME = "analytics"

Bucket = Literal["minute", "hour", "day"]
BUCKETS: tuple[Bucket, ...] = ("minute", "hour", "day")
"""The bucket sizes every event is counted in."""

MIGRATIONS: list[Migration] = [
    Migration(
        30,
        "analytics counts and booked sessions",
        [
            "CREATE TABLE IF NOT EXISTS analytics_counts ("
            " bucket VARCHAR(10) NOT NULL,"
            " bucket_start TIMESTAMP NOT NULL,"
            " event_type VARCHAR(100) NOT NULL,"
            " count BIGINT NOT NULL,"
            " PRIMARY KEY (bucket, bucket_start, event_type))",
            "CREATE TABLE IF NOT EXISTS analytics_session_booked ("
            " event_id VARCHAR(36) PRIMARY KEY,"
            " session_id VARCHAR(200) NOT NULL,"
            " coach_id VARCHAR(200) NOT NULL,"
            " user_id VARCHAR(200) NOT NULL,"
            " session_type VARCHAR(200) NOT NULL,"
            " booked_at TIMESTAMP NOT NULL)",
            "CREATE INDEX IF NOT EXISTS analytics_session_booked_at ON analytics_session_booked (booked_at)",
        ],
    )
]
"""The group's tables (versions 30-39 are reserved for it)."""

_INCREMENT = text(
    "INSERT INTO analytics_counts (bucket, bucket_start, event_type, count) VALUES (:bucket, :start, :event_type, 1)"
    " ON CONFLICT (bucket, bucket_start, event_type) DO UPDATE SET count = analytics_counts.count + 1"
).bindparams(bindparam("start", type_=DateTime()))
_BOOKED = text(
    "INSERT INTO analytics_session_booked (event_id, session_id, coach_id, user_id, session_type, booked_at)"
    " VALUES (:event_id, :session_id, :coach_id, :user_id, :session_type, :booked_at)"
    " ON CONFLICT (event_id) DO NOTHING"
).bindparams(bindparam("booked_at", type_=DateTime()))
_WINDOW = (bindparam("start", type_=DateTime()), bindparam("end", type_=DateTime()))
_BY_TYPE = text(
    "SELECT event_type, SUM(count) FROM analytics_counts"
    " WHERE bucket = :bucket AND bucket_start >= :start AND bucket_start < :end GROUP BY event_type"
).bindparams(*_WINDOW)
_BY_TYPE_ALL = text("SELECT event_type, SUM(count) FROM analytics_counts WHERE bucket = :bucket GROUP BY event_type")
_BOOKED_COUNT = text(
    "SELECT COUNT(*) FROM analytics_session_booked WHERE booked_at >= :start AND booked_at < :end"
).bindparams(*_WINDOW)
_BOOKED_COUNT_ALL = text("SELECT COUNT(*) FROM analytics_session_booked")
_COUNTS = (
    text(
        "SELECT bucket_start, event_type, count FROM analytics_counts"
        " WHERE bucket = :bucket AND bucket_start >= :start AND bucket_start < :end ORDER BY bucket_start, event_type"
    )
    .bindparams(*_WINDOW)
    .columns(bucket_start=DateTime())
)

_FAR_PAST = datetime(1, 1, 2)  # noqa: DTZ001 - stored timestamps are naive UTC
_FAR_FUTURE = datetime(9999, 12, 30)  # noqa: DTZ001


def _naive_utc(at: datetime) -> datetime:
    """``at`` in UTC without tzinfo (a naive ``at`` is taken as UTC already)."""
    return at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo is not None else at


def bucket_start(at: datetime, bucket: Bucket) -> datetime:
    """The start (naive UTC) of the ``bucket`` containing ``at``.

    Example: ``bucket_start(datetime(2025, 6, 2, 14, 35, 10, tzinfo=UTC), "hour") == datetime(2025, 6, 2, 14)``
    """
    at = _naive_utc(at)
    if bucket == "minute":
        return at.replace(second=0, microsecond=0)
    if bucket == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def _bucket_end(at: datetime, bucket: Bucket) -> datetime:
    """The end of the last ``bucket`` that starts before ``at`` (``at`` rounded up to the bucket)."""
    start = bucket_start(at, bucket)
    if start == _naive_utc(at):
        return start
    size = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}[bucket]
    return start + size


async def _count(conn: AsyncConnection, event: Event) -> None:
    occurred = event.metadata.occurred_at
    for bucket in BUCKETS:  # always the same order: concurrent transactions lock rows alike
        await conn.execute(
            _INCREMENT, {"bucket": bucket, "start": bucket_start(occurred, bucket), "event_type": event.event_type}
        )
    if isinstance(event, SessionCreated):
        await conn.execute(
            _BOOKED,
            {
                "event_id": str(event.event_id),
                "session_id": event.session_id,
                "coach_id": event.coach_id,
                "user_id": event.user_id,
                "session_type": event.session_type,
                "booked_at": _naive_utc(occurred),
            },
        )


def build(resources: Resources, *, retry: RetryPolicy | None = None) -> ConsumerGroup:
    """The ``analytics`` group (every event type). Example: ``registry.add(build(resources))``

    Its writes go through ``ctx.effects()``, i.e. the runtime's processed-events store: apply
    ``MIGRATIONS`` to that database (``resources.database`` is expected to be the same one).
    A transient database failure is retried in the handler within ``retry`` (default 60 s).
    """
    group = ConsumerGroup(GROUP_NAME)
    del resources
    storage = Patience("database", retry or RetryPolicy(), context={"group": GROUP_NAME})

    async def count_once(event: Event, ctx: HandlerContext) -> None:
        async with ctx.effects() as tx:
            if tx.first_time:
                assert tx.connection is not None  # noqa: S101 - set by __aenter__
                await _count(tx.connection, event)

    @group.handler("*")
    async def track(event: Event, ctx: HandlerContext) -> None:
        await storage.call(lambda: count_once(event, ctx), what=f"{event.event_type} {event.event_id}")

    return group


@dataclass(frozen=True, slots=True)
class AnalyticsSummary:
    """Events counted per type, and sessions booked, over a window.

    Without a window the counts come from the ``day`` buckets (all time); with ``since`` or
    ``until`` from the ``minute`` buckets, so the window is widened to whole minutes:
    ``since`` rounded down, ``until`` (exclusive) rounded up; ``sessions_booked`` uses the
    same widened window. ``since``/``until`` here are those rounded bounds (naive UTC).
    """

    total: int
    by_type: dict[str, int]
    sessions_booked: int
    precision: Literal["day", "minute"]
    since: datetime | None = None
    until: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (times as ISO-8601 UTC)."""
        return {
            "total": self.total,
            "by_type": dict(self.by_type),
            "sessions_booked": self.sessions_booked,
            "precision": self.precision,
            "since": None if self.since is None else self.since.replace(tzinfo=UTC).isoformat(),
            "until": None if self.until is None else self.until.replace(tzinfo=UTC).isoformat(),
        }


async def summary(
    database: Database, *, since: datetime | None = None, until: datetime | None = None
) -> AnalyticsSummary:
    """Counts per event type and sessions booked; all time, or in ``[since, until)`` to the minute.

    Naive datetimes are taken as UTC. See ``AnalyticsSummary`` for the precision.
    Example: ``(await summary(database, since=datetime.now(UTC) - timedelta(hours=1))).total``
    """
    windowed = since is not None or until is not None
    start = bucket_start(since, "minute") if since is not None else None
    end = _bucket_end(until, "minute") if until is not None else None
    window = {"start": start or _FAR_PAST, "end": end or _FAR_FUTURE}
    async with database.begin() as conn:
        if windowed:
            rows = (await conn.execute(_BY_TYPE, {"bucket": "minute", **window})).all()
            booked = (await conn.execute(_BOOKED_COUNT, window)).scalar_one()
        else:
            rows = (await conn.execute(_BY_TYPE_ALL, {"bucket": "day"})).all()
            booked = (await conn.execute(_BOOKED_COUNT_ALL)).scalar_one()
    by_type = {str(event_type): int(count) for event_type, count in sorted(rows)}
    return AnalyticsSummary(
        total=sum(by_type.values()),
        by_type=by_type,
        sessions_booked=int(booked),
        precision="minute" if windowed else "day",
        since=start,
        until=end,
    )


async def counts(
    database: Database, bucket: Bucket, *, since: datetime, until: datetime
) -> dict[tuple[datetime, str], int]:
    """The ``bucket`` counts starting in ``[since, until)``, by (bucket start (naive UTC), event type).

    Example: ``await counts(database, "hour", since=day_start, until=day_start + timedelta(days=1))``
    """
    window = {"bucket": bucket, "start": _naive_utc(since), "end": _naive_utc(until)}
    async with database.begin() as conn:
        rows = (await conn.execute(_COUNTS, window)).all()
    return {(start, str(event_type)): int(count) for start, event_type, count in rows}
