"""``eventbus outbox``: the transactional outbox of ``EVENTBUS_DATABASE_URL`` (backlog, relays, parked rows)."""

from __future__ import annotations

import asyncio
from typing import Any

import click
from rich.table import Table

from consumers import Database, outbox_status

from ._cli_common import cli_errors, console, echo_json
from ._composition import marketplace_migrations
from ._settings import load_settings

__all__ = ["outbox", "status"]


@click.group()
def outbox() -> None:
    """The transactional outbox: what waits to be sent, who sends it, what could not be sent."""


async def _status() -> dict[str, Any]:
    settings = load_settings()
    database = Database(settings.database_url)
    try:
        await database.migrate(marketplace_migrations())
        found = await outbox_status(
            database, scope=settings.connection().topic_prefix, lease_s=settings.relay_config().lease_s
        )
    finally:
        await database.close()
    return found.as_dict()


@outbox.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of tables.")
def status(as_json: bool) -> None:
    """Backlog, age of the oldest unsent event, publish rate, errors, parked rows, relays and their slots."""
    with cli_errors():
        found = asyncio.run(_status())
    if as_json:
        echo_json(found)
        return
    out = console()
    out.print(
        f"backlog {found['backlog']} · oldest {found['oldest_age_s']:.1f} s · "
        f"{found['publish_rate']:.0f} events/s · errors {found['errors']} · parked {found['parked']}"
    )
    table = Table("relay", "alive", "slots", "sent", "rate/s", "errors", "parked", "seen")
    for relay in found["relays"]:
        table.add_row(
            relay["owner"],
            "yes" if relay["alive"] else "no",
            str(relay["slots"]),
            str(relay["sent"]),
            f"{relay['rate']:.0f}",
            str(relay["errors"]),
            str(relay["parked"]),
            f"{relay['seen_s_ago']:.1f} s ago",
        )
    out.print(table)
