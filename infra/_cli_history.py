"""``eventbus history``: the last events across the entity topics."""

from __future__ import annotations

import asyncio

import click
from rich.markup import escape
from rich.table import Table

from ._cli_common import check_pattern, cli_errors, console, echo_json, record_time
from ._reader import read_history
from ._settings import load_settings

__all__ = ["history"]


@click.command()
@click.option("-n", "count", type=click.IntRange(min=1), default=50, show_default=True, help="How many events.")
@click.option("--type", "pattern", metavar="PATTERN", help="Only event types matching this glob, e.g. 'payment:*'.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
def history(count: int, pattern: str | None, as_json: bool) -> None:
    """The last N events across all entity topics, newest last."""
    pattern = check_pattern(pattern)
    with cli_errors():
        settings = load_settings()
        records = asyncio.run(read_history(settings.connection(), count, pattern=pattern))
    if as_json:
        echo_json([record.as_dict() for record in records])
        return
    table = Table("time", "type", "key", "event id", "correlation id", title=f"last {len(records)} events")
    for record in records:
        key = record.key.decode("utf-8", errors="replace") if record.key is not None else ""
        if record.event is None:
            problem = record.error.message if record.error is not None else ""
            kind = f"[red]undecodable[/] {escape(record.event_type or '')}"
            table.add_row(record_time(record.timestamp_ms), kind, escape(key), escape(problem), "")
            continue
        correlation = escape(record.event.metadata.correlation_id or "")
        table.add_row(
            record_time(record.timestamp_ms),
            escape(record.event.event_type),
            escape(key),
            str(record.event_id),
            correlation,
        )
    console().print(table)
