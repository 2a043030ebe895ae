"""The processed-events store: effects once per (group, event id)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection

from ._database import Database, Migration

__all__ = ["PROCESSED_EVENTS_MIGRATION", "Effects", "ProcessedEventStore"]

_RECORD = text(
    "INSERT INTO processed_events (group_name, event_id, processed_at) VALUES (:g, :e, :t)"
    " ON CONFLICT (group_name, event_id) DO NOTHING"
)

PROCESSED_EVENTS_MIGRATION = Migration(
    1,
    "processed events",
    [
        "CREATE TABLE IF NOT EXISTS processed_events ("
        " group_name VARCHAR(200) NOT NULL, event_id VARCHAR(36) NOT NULL,"
        " processed_at TIMESTAMP NOT NULL, PRIMARY KEY (group_name, event_id))"
    ],
)


class Effects:
    """A transaction that first records (group, event id).

    ``first_time`` is False when the event was processed before: skip the
    effect, but still publish follow-ups (they have deterministic ids).
    """

    def __init__(self, store: ProcessedEventStore, group: str, event_id: UUID) -> None:
        self._store = store
        self._group = group
        self._event_id = str(event_id)
        self._tx: Any = None
        self.first_time = False
        self.connection: AsyncConnection | None = None

    async def __aenter__(self) -> Self:
        self._tx = self._store.database.begin()
        self.connection = await self._tx.__aenter__()
        try:
            result = await self.connection.execute(
                _RECORD, {"g": self._group, "e": self._event_id, "t": datetime.now(UTC).replace(tzinfo=None)}
            )
        except BaseException as exc:
            # Not inside the ``async with`` body yet: end the transaction here, which rolls it back and
            # turns a driver error into a StorageError (retriable for a lock conflict or lost connection).
            self.connection = None
            await self._tx.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self.first_time = result.rowcount == 1
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._tx.__aexit__(exc_type, exc, tb)

    async def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> CursorResult[Any]:
        """Run a statement in this transaction (named ``:params``)."""
        if self.connection is None:
            msg = "use `async with ctx.effects() as tx`"
            raise RuntimeError(msg)
        return await self.connection.execute(text(sql), dict(params or {}))


class ProcessedEventStore:
    """Which events each group has applied, in the same database as the groups' own tables.

    Example: ``async with store.effects("credits", event.event_id) as tx: ...``
    """

    def __init__(self, database: Database) -> None:
        self.database = database

    async def migrate(self) -> None:
        """Create the table if needed."""
        await self.database.migrate([PROCESSED_EVENTS_MIGRATION])

    def effects(self, group: str, event_id: UUID) -> Effects:
        """The once-only transaction of ``group`` for ``event_id``."""
        return Effects(self, group, event_id)

    async def seen(self, group: str, event_id: UUID) -> bool:
        """Whether ``group`` has applied ``event_id``."""
        async with self.database.begin() as conn:
            row = await conn.execute(
                text("SELECT 1 FROM processed_events WHERE group_name = :g AND event_id = :e"),
                {"g": group, "e": str(event_id)},
            )
            return row.first() is not None
