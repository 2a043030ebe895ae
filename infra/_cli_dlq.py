"""``eventbus dlq``: list dead letters and replay them, once."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ._cli_common import EXIT_INVALID_INPUT, cli_errors, console, echo_json, fail, parse_since
from ._dlq import DeadLetterFilter, list_dead_letters, replay_dead_letters
from ._settings import load_settings

__all__ = ["dlq"]


def _filters(function: Callable[..., Any]) -> Callable[..., Any]:
    """The selection options ``dlq list`` and ``dlq replay`` share."""
    options = [
        click.option("--group", help="Only this consumer group's dead letters."),
        click.option("--type", "event_type", metavar="GLOB", help="Original event type glob, e.g. 'session:*'."),
        click.option("--since", metavar="TIME", help="Last failure at or after TIME (ISO-8601, or 15m, 2h, 1d ago)."),
        click.option("--until", metavar="TIME", help="Last failure at or before TIME (ISO-8601, or 15m, 2h, 1d ago)."),
        click.option(
            "--error", metavar="TEXT", help="Error type glob (e.g. '*Timeout*') or a piece of the error message."
        ),
        click.option(
            "--letter",
            "letters",
            metavar="PARTITION/OFFSET",
            multiple=True,
            help="Only this dead letter, as the location column shows it (repeatable).",
        ),
        click.option("--partition", type=click.IntRange(min=0), help="Only dead letters in this system partition."),
        click.option("--from-offset", type=click.IntRange(min=0), help="Only dead letters at or after this offset."),
        click.option("--to-offset", type=click.IntRange(min=0), help="Only dead letters at or before this offset."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _selection(
    group: str | None,
    event_type: str | None,
    since: str | None,
    until: str | None,
    error: str | None,
    letters: tuple[str, ...],
    partition: int | None,
    from_offset: int | None,
    to_offset: int | None,
) -> DeadLetterFilter:
    for letter in letters:
        head, _, tail = letter.partition("/")
        if not (head.isdigit() and tail.isdigit()):
            fail(f"--letter {letter!r} is not PARTITION/OFFSET, e.g. 0/12", code=EXIT_INVALID_INPUT)
    return DeadLetterFilter(
        group=group,
        event_type=event_type,
        since=parse_since(since),
        until=parse_since(until, option="--until"),
        error=error,
        letters=frozenset(f"{int(p)}/{int(o)}" for p, _, o in (letter.partition("/") for letter in letters)),
        partition=partition,
        from_offset=from_offset,
        to_offset=to_offset,
    )


@click.group()
def dlq() -> None:
    """Dead letters: the system:error events on the system topic."""


@dlq.command("list")
@_filters
@click.option("--pending", is_flag=True, help="Only dead letters not replayed yet.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array (original bytes in base64).")
def list_command(pending: bool, as_json: bool, **criteria: Any) -> None:
    """List dead letters, oldest failure first; replayed ones say where their record went."""
    selection = _selection(**criteria)
    with cli_errors():
        settings = load_settings()
        letters = asyncio.run(list_dead_letters(settings.connection(), selection))
    if pending:
        letters = [dead for dead in letters if dead.replayed is None]
    if as_json:
        echo_json([letter.as_dict() for letter in letters])
        return
    columns = ("location", "group", "event type", "event id", "original", "attempts", "error", "last failure")
    table = Table(*columns, "replayed")
    for dead in letters:
        letter = dead.letter
        mark = dead.replayed
        replayed = "" if mark is None else f"{mark.replayed_at:%Y-%m-%d %H:%M:%S} -> {mark.replayed_to}"
        if mark is not None and mark.times > 1:
            replayed += f" ({mark.times}x)"
        table.add_row(
            dead.location,
            letter.consumer_group,
            letter.original_event_type or "(undecodable)",
            str(letter.original_event_id or ""),
            f"{letter.original_topic}/{letter.original_partition}/{letter.original_offset}",
            str(letter.attempts),
            escape(f"{letter.error_type}: {letter.error_message}"[:120]),
            letter.last_failure_at.isoformat(timespec="seconds"),
            escape(replayed),
        )
    console().print(table)
    done = sum(1 for dead in letters if dead.replayed is not None)
    click.echo(f"{len(letters)} dead letters, {done} replayed")


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr while records are replayed; none when stderr is not a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("replay", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@dlq.command("replay")
@_filters
@click.option("--again", is_flag=True, help="Also replay dead letters replayed before.")
@click.option("--include-undecodable", is_flag=True, help="Also replay bytes no decoder accepted (schema fixed?).")
@click.option("--max", "max_count", type=click.IntRange(min=1), help="Send at most N records (oldest first).")
@click.option("--dry-run", is_flag=True, help="Show exactly what would be sent; send and mark nothing.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="At most N records per second.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def replay_command(
    again: bool,
    include_undecodable: bool,
    max_count: int | None,
    dry_run: bool,
    rate: float | None,
    as_json: bool,
    **criteria: Any,
) -> None:
    """Re-publish the original bytes, key and headers of dead letters to their original topic, once.

    Each replayed dead letter is marked in the replay log (the system-replays
    topic), so running the same replay again sends nothing; --again replays
    marked ones too. One record that failed in several groups is sent once
    (every group on its topic sees it); groups that record effects per event
    id apply it once. Undecodable dead letters are left out unless
    --include-undecodable.
    """
    selection = _selection(**criteria)
    with cli_errors():
        settings = load_settings()
        with _progress_bar(not dry_run) as progress:
            report = asyncio.run(
                replay_dead_letters(
                    settings.connection(),
                    settings.publisher_config("eventbus-dlq-replay"),
                    selection,
                    again=again,
                    include_undecodable=include_undecodable,
                    max_count=max_count,
                    dry_run=dry_run,
                    rate_per_s=rate,
                    progress=progress,
                )
            )
    if as_json:
        echo_json(report.as_dict())
        return
    for entry in report.replayed:
        target = entry["replayed_to"] or "(dry run)"
        letters = ",".join(entry["dead_letters"])
        what = entry["event_type"] or "(undecodable)"
        click.echo(f"{entry['original']} -> {target}  {what}  {entry['event_id'] or '-'}  dead letters {letters}")
    verb = "would send" if dry_run else "sent"
    letters_settled = sum(len(entry["dead_letters"]) for entry in report.replayed)
    click.echo(f"{verb} {len(report.replayed)} records for {letters_settled} dead letters")
    skipped = [
        (report.skipped_replayed, "replayed before (--again to send them)"),
        (report.skipped_undecodable, "undecodable (--include-undecodable to send them)"),
        (report.left_for_later, "over --max"),
    ]
    for count, why in skipped:
        if count:
            click.echo(f"left out {count} dead letters: {why}")
