"""``eventbus notifications``: read a user's in-app inbox (the ``notifications`` group's table)."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager

import click
from rich.table import Table

from consumers import PROCESSED_EVENTS_MIGRATION, Database, migrated_database
from consumers.groups.notifications import MIGRATIONS, InboxItem, list_notifications, mark_read

from ._cli_common import cli_errors, console, echo_json, fail, reading_database_url
from ._settings import Settings, load_settings

__all__ = ["notifications_group"]


def _database(settings: Settings) -> AbstractAsyncContextManager[Database]:
    # Listing and marking read never create the database: a missing SQLite file has no notifications.
    url = reading_database_url(settings.database_url)
    return migrated_database(url, [PROCESSED_EVENTS_MIGRATION, *MIGRATIONS])


async def _list(settings: Settings, user_id: str, unread_only: bool, limit: int) -> list[InboxItem]:
    async with _database(settings) as database:
        return await list_notifications(database, user_id, unread_only=unread_only, limit=limit)


async def _mark_read(settings: Settings, notification_id: str) -> bool:
    async with _database(settings) as database:
        return await mark_read(database, notification_id)


@click.group("notifications")
def notifications_group() -> None:
    """In-app notifications (EVENTBUS_DATABASE_URL; written by the `notifications` group)."""


@notifications_group.command("list")
@click.argument("user_id")
@click.option("--unread", "unread_only", is_flag=True, help="Only the notifications not read yet.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
def list_command(user_id: str, unread_only: bool, limit: int, as_json: bool) -> None:
    """USER_ID's notifications, newest first.

    Example: eventbus notifications list user-42 --unread
    """
    with cli_errors():
        settings = load_settings()
        items = asyncio.run(_list(settings, user_id, unread_only, limit))
    if as_json:
        echo_json([item.as_dict() for item in items])
        return
    table = Table("created (UTC)", "type", "title", "body", "read", "id", title=f"{len(items)} notifications")
    for item in items:
        table.add_row(
            item.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            item.notification_type.value,
            item.title,
            item.body,
            "yes" if item.read else "no",
            str(item.notification_id),
        )
    console().print(table)


@notifications_group.command("mark-read")
@click.argument("notification_id")
def mark_read_command(notification_id: str) -> None:
    """Mark NOTIFICATION_ID read; exit 1 when there is no such notification.

    Example: eventbus notifications mark-read 1b4e28ba-2fa1-5b2c-9f2e-6b1a0c9d7e3f
    """
    with cli_errors():
        settings = load_settings()
        found = asyncio.run(_mark_read(settings, notification_id))
    if not found:
        fail(f"no notification {notification_id}")
    click.echo(f"marked read: {notification_id}")
