"""``eventbus stats``: the original getStats() and the lag of each group."""

from __future__ import annotations

import asyncio

import click
from rich.table import Table

from consumers import Database, GroupRegistry, MemoryCache, Resources

from ._cli_common import EXIT_INVALID_INPUT, cli_errors, console, echo_json, fail, reading_database_url
from ._cli_run import load_registry
from ._settings import Settings, load_settings
from ._stats import BusStats, collect_stats

__all__ = ["stats"]


def _groups(settings: Settings, app: str | None, names: tuple[str, ...]) -> GroupRegistry:
    # The groups are only described, never run: their database is never written to.
    database = Database(reading_database_url(settings.database_url))
    resources = Resources(database=database, cache=MemoryCache(), settings=settings.group_settings())
    registry = load_registry(app, resources)
    if not names:
        return registry
    with cli_errors():
        return GroupRegistry(registry.get(name) for name in names)


def _print_stats(result: BusStats) -> None:
    click.echo(f"total events: {result.total_events}    subscriptions: {result.subscription_count}")
    types = Table("event type", "events")
    for event_type, count in result.events_by_type.items():
        types.add_row(event_type, str(count))
    lag = Table("group", "topic", "partition", "committed", "end", "lag")
    for group in result.groups:
        for part in group.partitions:
            committed = "-" if part.committed is None else str(part.committed)
            lag.add_row(group.group, part.topic, str(part.partition), committed, str(part.end), str(part.lag))
    out = console()
    out.print(types)
    out.print(lag)


@click.command()
@click.option("--group", "names", multiple=True, help="Only these groups (default: every group of the app).")
@click.option("--app", help="module:attribute of the groups (default: the built-in groups).")
@click.option("--no-types", is_flag=True, help="Skip counting events by type (it reads every record's headers).")
@click.option("--json", "as_json", is_flag=True, help="Print getStats() as JSON.")
def stats(names: tuple[str, ...], app: str | None, no_types: bool, as_json: bool) -> None:
    """The original getStats(): total events, subscriptions, events by type; plus lag per group and partition.

    End offsets come from the high watermark fetches report (the embedded
    broker's ListOffsets answer is wrong); lag never shows negative.
    """
    with cli_errors():
        settings = load_settings()
        registry = _groups(settings, app, names)
        if not len(registry):
            fail("no consumer groups to report on", code=EXIT_INVALID_INPUT)
        result = asyncio.run(collect_stats(settings.connection(), list(registry), count_types=not no_types))
    if as_json:
        echo_json(result.as_dict())
    else:
        _print_stats(result)
