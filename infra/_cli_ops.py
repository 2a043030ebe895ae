"""``eventbus dlq`` and ``eventbus stats``: operating the consumer groups."""

from __future__ import annotations

import asyncio

import click
from rich.markup import escape
from rich.table import Table

from consumers import Database, GroupRegistry, MemoryCache, Resources

from ._cli_common import EXIT_INVALID_INPUT, cli_errors, console, echo_json, fail, parse_since
from ._cli_run import load_registry
from ._dlq import list_dead_letters, replay_dead_letters
from ._settings import Settings, load_settings
from ._stats import BusStats, collect_stats

__all__ = ["dlq", "stats"]


@click.group()
def dlq() -> None:
    """Dead letters: the system:error events on the system topic."""


@dlq.command("list")
@click.option("--group", help="Only this consumer group's dead letters.")
@click.option("--type", "event_type", help="Original event type glob, e.g. 'session:*'.")
@click.option("--since", help="Last failure at or after TIME (ISO-8601, or 15m, 2h, 1d).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array (original bytes in base64).")
def list_command(group: str | None, event_type: str | None, since: str | None, as_json: bool) -> None:
    """List dead letters, oldest first."""
    settings = load_settings()
    with cli_errors():
        letters = asyncio.run(
            list_dead_letters(settings.connection(), group=group, event_type=event_type, since=parse_since(since))
        )
    if as_json:
        echo_json([letter.as_dict() for letter in letters])
        return
    table = Table("location", "group", "event type", "event id", "original", "attempts", "error", "last failure")
    for dead in letters:
        letter = dead.letter
        table.add_row(
            dead.location,
            letter.consumer_group,
            letter.original_event_type or "(undecodable)",
            str(letter.original_event_id or ""),
            f"{letter.original_topic}/{letter.original_partition}/{letter.original_offset}",
            str(letter.attempts),
            escape(f"{letter.error_type}: {letter.error_message}"[:120]),
            letter.last_failure_at.isoformat(timespec="seconds"),
        )
    console().print(table)
    click.echo(f"{len(letters)} dead letters")


@dlq.command("replay")
@click.option("--group", help="Only this consumer group's dead letters.")
@click.option("--type", "event_type", help="Original event type glob, e.g. 'session:*'.")
@click.option("--since", help="Last failure at or after TIME (ISO-8601, or 15m, 2h, 1d).")
@click.option("--max", "max_count", type=click.IntRange(min=1), help="Replay at most N dead letters (oldest first).")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; publish nothing.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="At most R records per second.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def replay_command(
    group: str | None,
    event_type: str | None,
    since: str | None,
    max_count: int | None,
    dry_run: bool,
    rate: float | None,
    as_json: bool,
) -> None:
    """Re-publish the original bytes, key and headers of dead letters to their original topic.

    Groups that record effects per event id apply a replayed event once, so
    replaying twice does not double-apply.
    """
    settings = load_settings()
    with cli_errors():
        report = asyncio.run(
            replay_dead_letters(
                settings.connection(),
                settings.publisher_config("eventbus-dlq-replay"),
                group=group,
                event_type=event_type,
                since=parse_since(since),
                max_count=max_count,
                dry_run=dry_run,
                rate_per_s=rate,
            )
        )
    if as_json:
        echo_json(report.as_dict())
        return
    for entry in report.replayed:
        target = entry["replayed_to"] or "(dry run)"
        click.echo(f"{entry['dead_letter']}  {entry['group']}  {entry['event_type']}  {entry['original']} -> {target}")
    verb = "would replay" if dry_run else "replayed"
    click.echo(f"{verb} {len(report.replayed)} dead letters")


def _groups(settings: Settings, app: str | None, names: tuple[str, ...]) -> GroupRegistry:
    resources = Resources(
        database=Database(settings.database_url), cache=MemoryCache(), settings=settings.group_settings()
    )
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
    settings = load_settings()
    with cli_errors():
        registry = _groups(settings, app, names)
        if not len(registry):
            fail("no consumer groups to report on", code=EXIT_INVALID_INPUT)
        result = asyncio.run(collect_stats(settings.connection(), list(registry), count_types=not no_types))
    if as_json:
        echo_json(result.as_dict())
    else:
        _print_stats(result)
