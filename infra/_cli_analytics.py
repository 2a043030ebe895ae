"""``eventbus analytics``: what the ``analytics`` group counted."""

from __future__ import annotations

import asyncio
from datetime import datetime

import click
from rich.table import Table

from consumers import PROCESSED_EVENTS_MIGRATION, migrated_database
from consumers.groups.analytics import MIGRATIONS, AnalyticsSummary, summary

from ._cli_common import cli_errors, console, echo_json, parse_since, reading_database_url
from ._settings import Settings, load_settings

__all__ = ["analytics"]


async def _summary(settings: Settings, since: datetime | None) -> AnalyticsSummary:
    url = reading_database_url(settings.database_url)
    async with migrated_database(url, [PROCESSED_EVENTS_MIGRATION, *MIGRATIONS]) as database:
        return await summary(database, since=since)


@click.group()
def analytics() -> None:
    """Event counts kept by the `analytics` group (EVENTBUS_DATABASE_URL)."""


@analytics.command("summary")
@click.option("--since", metavar="TIME", help="Only events since TIME: ISO-8601 (UTC if no offset) or 15m, 2h, 1d.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def summary_command(since: str | None, as_json: bool) -> None:
    """Events counted per type, and sessions booked: all time (per day), or in a window (per minute).

    --since is rounded down to the minute. Each event is counted once, however often it was delivered.

    Example: eventbus analytics summary --since 1h
    """
    start = parse_since(since)
    with cli_errors():
        settings = load_settings()
        result = asyncio.run(_summary(settings, start))
    if as_json:
        echo_json(result.as_dict())
        return
    window = "all time" if result.precision == "day" else _window(result)
    table = Table("event type", "count", title=f"{result.total} events, {window}")
    for event_type, count in result.by_type.items():
        table.add_row(event_type, str(count))
    out = console()
    out.print(table)
    out.print(f"sessions booked: {result.sessions_booked}")


def _window(result: AnalyticsSummary) -> str:
    def show(at: datetime | None) -> str:
        return "…" if at is None else at.strftime("%Y-%m-%d %H:%M") + "Z"

    return f"since {show(result.since)}"
