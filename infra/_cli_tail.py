"""``eventbus tail``: follow the entity topics and print each event."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import click
from rich.markup import escape

from ._cli_common import check_entities, check_pattern, cli_errors, console, echo_json, record_time
from ._reader import ReadRecord, tail_records
from ._settings import Settings, load_settings

__all__ = ["tail"]

_EXIT_INTERRUPTED = 130


def _line(record: ReadRecord) -> str:
    """One human-readable line (rich markup) for ``tail``."""
    where = f"{record.topic}/{record.partition}@{record.offset}"
    key = record.key.decode("utf-8", errors="replace") if record.key is not None else "-"
    head = f"[dim]{record_time(record.timestamp_ms)}[/] {escape(where)} "
    if record.event is None:
        problem = record.error.message if record.error is not None else "no value"
        return f"{head}[bold red]undecodable[/] key={escape(key)} [red]{escape(problem)}[/]"
    body = record.event.model_dump_json(exclude={"metadata"})
    return f"{head}[bold cyan]{escape(str(record.event_type))}[/] key={escape(key)} id={record.event_id} {escape(body)}"


async def _tail(
    settings: Settings,
    entities: list[str] | None,
    pattern: str | None,
    from_beginning: bool,
    limit: int | None,
    idle_timeout_s: float | None,
    as_json: bool,
) -> None:
    out = console()
    shown = 0
    records = tail_records(
        settings.connection(),
        entities,
        pattern=pattern,
        from_beginning=from_beginning,
        idle_timeout_s=idle_timeout_s,
    )
    async with aclosing(records):
        async for record in records:
            if as_json:
                echo_json(record.as_dict())
            else:
                out.print(_line(record), soft_wrap=True)
            if record.event is not None:
                shown += 1
                if limit is not None and shown >= limit:
                    return


@click.command()
@click.argument("topics", nargs=-1)
@click.option("--type", "pattern", metavar="PATTERN", help="Only event types matching this glob, e.g. 'session:*'.")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest record instead of the current end.")
@click.option("--max", "limit", type=click.IntRange(min=1), help="Stop after this many matching events.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option(
    "--timeout", "idle_timeout", type=click.FloatRange(min=0, min_open=True), help="Stop after SECONDS without events."
)
def tail(
    topics: tuple[str, ...],
    pattern: str | None,
    from_beginning: bool,
    limit: int | None,
    as_json: bool,
    idle_timeout: float | None,
) -> None:
    """Follow the entity TOPICS (session, coach, ...; default: all) and print each event.

    Reads without a consumer group, so services' offsets are untouched.
    Undecodable records are shown as errors (not counted by --max) and the
    tail goes on. Runs until Ctrl-C (exit status 130) unless --max or --timeout ends it.
    """
    entities = check_entities(topics)
    pattern = check_pattern(pattern)
    with cli_errors():
        settings = load_settings()
        try:
            asyncio.run(_tail(settings, entities, pattern, from_beginning, limit, idle_timeout, as_json))
        except KeyboardInterrupt:
            raise click.exceptions.Exit(_EXIT_INTERRUPTED) from None
