"""The in-app inbox: table ``notifications_inbox``, its rows, and reading/marking them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from sqlalchemy import Boolean, DateTime, Integer, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from consumers import Database, Migration
from schemas import NotificationAction, NotificationType

__all__ = [
    "MIGRATIONS",
    "NOTIFICATION_NAMESPACE",
    "InboxItem",
    "Notification",
    "fetch_by_source",
    "insert_notification",
    "list_notifications",
    "mark_emailed",
    "mark_read",
    "notification_id",
]

NOTIFICATION_NAMESPACE = uuid5(NAMESPACE_URL, "https://eventbus.coaching/notification")
"""UUIDv5 namespace of notification ids."""

MIGRATIONS: list[Migration] = [
    Migration(
        20,
        "notifications inbox",
        [
            "CREATE TABLE IF NOT EXISTS notifications_inbox ("
            " notification_id VARCHAR(36) PRIMARY KEY,"
            " user_id VARCHAR(200) NOT NULL,"
            " type VARCHAR(40) NOT NULL,"
            " title TEXT NOT NULL,"
            " body TEXT NOT NULL,"
            " icon VARCHAR(100),"
            " actions TEXT NOT NULL,"
            " read BOOLEAN NOT NULL DEFAULT FALSE,"
            " source_event_id VARCHAR(36) NOT NULL,"
            " created_at TIMESTAMP NOT NULL,"
            " emailed_at TIMESTAMP)"
        ],
    ),
    Migration(
        21,
        "notifications inbox indexes",
        [
            "CREATE INDEX IF NOT EXISTS notifications_inbox_user ON notifications_inbox (user_id, created_at)",
            "CREATE INDEX IF NOT EXISTS notifications_inbox_source ON notifications_inbox (source_event_id)",
        ],
    ),
]
"""The group's tables (versions 20-29 belong to the notifications group)."""

_SELECT = (
    "SELECT notification_id, user_id, type, title, body, icon, actions, read, source_event_id, created_at, emailed_at"
    " FROM notifications_inbox"
)
_INSERT = (
    "INSERT INTO notifications_inbox"
    " (notification_id, user_id, type, title, body, icon, actions, read, source_event_id, created_at, emailed_at)"
    " VALUES (:notification_id, :user_id, :type, :title, :body, :icon, :actions, :read, :source_event_id,"
    " :created_at, NULL) ON CONFLICT (notification_id) DO NOTHING"
)
_BY_SOURCE = _SELECT + " WHERE source_event_id = :source"
_BY_USER = _SELECT + " WHERE user_id = :user ORDER BY created_at DESC, notification_id LIMIT :limit"
_UNREAD_BY_USER = (
    _SELECT + " WHERE user_id = :user AND read = :read ORDER BY created_at DESC, notification_id LIMIT :limit"
)


def notification_id(source_event_id: UUID, recipient: str, notification_type: NotificationType) -> UUID:
    """The id of the ``notification_type`` notification that ``source_event_id`` gives ``recipient``.

    The same on every redelivery, so the inbox keeps one row.
    Example: ``notification_id(event.event_id, "user-1", NotificationType.SESSION_CONFIRMED)``
    """
    return uuid5(NOTIFICATION_NAMESPACE, f"{source_event_id}/{recipient}/{notification_type.value}")


@dataclass(frozen=True, slots=True)
class Notification:
    """A rendered notification for one recipient, ready for the channels."""

    notification_id: UUID
    user_id: str
    notification_type: NotificationType
    title: str
    body: str
    icon: str | None
    actions: tuple[NotificationAction, ...]
    source_event_id: UUID


@dataclass(frozen=True, slots=True)
class InboxItem:
    """A stored notification. Example: ``(await list_notifications(db, "user-1"))[0].title``"""

    notification_id: UUID
    user_id: str
    notification_type: NotificationType
    title: str
    body: str
    icon: str | None
    actions: tuple[NotificationAction, ...]
    read: bool
    source_event_id: UUID
    created_at: datetime
    """When the row was written (UTC)."""
    emailed_at: datetime | None
    """When the email went out (UTC); None when not emailed (no SMTP host, or not yet)."""

    def notification(self) -> Notification:
        """The content, for a channel."""
        return Notification(
            notification_id=self.notification_id,
            user_id=self.user_id,
            notification_type=self.notification_type,
            title=self.title,
            body=self.body,
            icon=self.icon,
            actions=self.actions,
            source_event_id=self.source_event_id,
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (ids and times as strings)."""
        return {
            "notification_id": str(self.notification_id),
            "user_id": self.user_id,
            "type": self.notification_type.value,
            "title": self.title,
            "body": self.body,
            "icon": self.icon,
            "actions": [action.model_dump() for action in self.actions],
            "read": self.read,
            "source_event_id": str(self.source_event_id),
            "created_at": self.created_at.replace(tzinfo=UTC).isoformat(),
            "emailed_at": self.emailed_at.replace(tzinfo=UTC).isoformat() if self.emailed_at else None,
        }


async def insert_notification(connection: AsyncConnection, notification: Notification) -> bool:
    """Store ``notification`` unless its id is there already; True when a row was written."""
    statement = text(_INSERT).bindparams(bindparam("read", type_=Boolean), bindparam("created_at", type_=DateTime))
    result = await connection.execute(
        statement,
        {
            "notification_id": str(notification.notification_id),
            "user_id": notification.user_id,
            "type": notification.notification_type.value,
            "title": notification.title,
            "body": notification.body,
            "icon": notification.icon,
            "actions": json.dumps([a.model_dump() for a in notification.actions], ensure_ascii=False),
            "read": False,
            "source_event_id": str(notification.source_event_id),
            "created_at": _now(),
        },
    )
    return bool(result.rowcount == 1)


async def fetch_by_source(connection: AsyncConnection, source_event_id: UUID) -> dict[UUID, InboxItem]:
    """The stored notifications that ``source_event_id`` produced, by notification id."""
    statement = text(_BY_SOURCE)
    rows = await connection.execute(statement, {"source": str(source_event_id)})
    items = [_item(row._mapping) for row in rows]
    return {item.notification_id: item for item in items}


async def mark_emailed(database: Database, notification_id: UUID) -> bool:
    """Record that the email of ``notification_id`` went out; False when it was recorded already."""
    statement = text(
        "UPDATE notifications_inbox SET emailed_at = :at WHERE notification_id = :id AND emailed_at IS NULL"
    ).bindparams(bindparam("at", type_=DateTime))
    async with database.begin() as conn:
        result = await conn.execute(statement, {"at": _now(), "id": str(notification_id)})
    return bool(result.rowcount == 1)


async def list_notifications(
    database: Database, user_id: str, *, unread_only: bool = False, limit: int = 50
) -> list[InboxItem]:
    """The newest notifications of ``user_id`` first.

    Example: ``unread = await list_notifications(db, "user-1", unread_only=True)``
    """
    statement = text(_UNREAD_BY_USER if unread_only else _BY_USER)
    statement = statement.bindparams(bindparam("limit", type_=Integer))
    if unread_only:
        statement = statement.bindparams(bindparam("read", type_=Boolean))
    params: dict[str, Any] = {"user": user_id, "limit": max(0, limit)}
    if unread_only:
        params["read"] = False
    async with database.begin() as conn:
        rows = await conn.execute(statement, params)
        return [_item(row._mapping) for row in rows]


async def mark_read(database: Database, notification_id: UUID | str) -> bool:
    """Mark a notification read; False when there is no such notification.

    Example: ``await mark_read(db, item.notification_id)``
    """
    statement = text("UPDATE notifications_inbox SET read = :read WHERE notification_id = :id").bindparams(
        bindparam("read", type_=Boolean)
    )
    async with database.begin() as conn:
        result = await conn.execute(statement, {"read": True, "id": str(notification_id)})
    return bool(result.rowcount == 1)


def _item(row: Any) -> InboxItem:
    actions = tuple(NotificationAction.model_validate(item) for item in json.loads(row["actions"]))
    return InboxItem(
        notification_id=UUID(row["notification_id"]),
        user_id=row["user_id"],
        notification_type=NotificationType(row["type"]),
        title=row["title"],
        body=row["body"],
        icon=row["icon"],
        actions=actions,
        read=bool(row["read"]),
        source_event_id=UUID(row["source_event_id"]),
        created_at=_timestamp(row["created_at"]),
        emailed_at=None if row["emailed_at"] is None else _timestamp(row["emailed_at"]),
    )


def _timestamp(value: datetime | str) -> datetime:
    """A naive UTC ``TIMESTAMP``: PostgreSQL returns a datetime, SQLite the ISO text that was bound."""
    # Not ``text(...).columns(created_at=DateTime)``: with SQLAlchemy 2.1.9 a TextualSelect's cache key
    # can fail ("'InternalTraversal' object is not callable") depending on import order (seen under coverage).
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
