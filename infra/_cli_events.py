"""``eventbus publish``, ``tail``, ``history`` and ``settings``: events in and out from the command line."""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from producers import EventPublisher, PublishResult
from schemas import CATALOG, Event
from schemas.errors import UnknownTopicError

from ._cli_common import EXIT_INVALID_INPUT, cli_errors, console, echo_json, fail, spec_or_exit
from ._reader import ReadRecord, read_history, tail_records
from ._settings import Settings, load_settings

__all__ = ["history", "publish", "show_settings", "tail"]

_EXIT_INTERRUPTED = 130


# -- publish ----------------------------------------------------------------------------------


def _read_data(data: str) -> dict[str, Any]:
    """The JSON object given as ``--data``: inline, ``@file.json`` or ``-`` for stdin; exit 2 when invalid."""
    source = "--data"
    if data == "-":
        text, source = sys.stdin.read(), "stdin"
    elif data.startswith("@"):
        path = Path(data[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read --data file {str(path)!r}: {exc}", code=EXIT_INVALID_INPUT)
        source = str(path)
    else:
        text = data
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{source} is not valid JSON: {exc}", code=EXIT_INVALID_INPUT)
    if not isinstance(value, dict):
        fail(f"{source} must be a JSON object, not {type(value).__name__}", code=EXIT_INVALID_INPUT)
    return value


async def _publish(settings: Settings, event: Event) -> PublishResult:
    config = settings.publisher_config("eventbus-cli")
    publisher = EventPublisher(connection=settings.connection(), config=config)
    # The publisher bounds connect and delivery itself; this outer bound is a safety net over both.
    limit = settings.connect_timeout_s + config.delivery_timeout_s + 2 * settings.request_timeout_s
    async with asyncio.timeout(limit), publisher:
        return await publisher.publish(event)


@click.command()
@click.argument("event_type")
@click.option("--data", "data", required=True, help="The event as JSON: inline, @file.json, or - for stdin.")
def publish(event_type: str, data: str) -> None:
    """Validate and publish one EVENT_TYPE event; print where it was stored as one JSON line.

    Metadata is optional: a missing event id or time is filled in. Invalid JSON,
    invalid data or an unknown type exit with status 2 and nothing is sent.

    Example: eventbus publish session:created --data @session.json
    """
    spec_or_exit(event_type)
    payload = _read_data(data)
    with cli_errors():
        event = CATALOG.parse(event_type, payload)
        settings = load_settings()
        try:
            result = asyncio.run(_publish(settings, event))
        except TimeoutError:
            fail(f"publishing {event_type} did not finish in time")
    echo_json(result.as_dict())


# -- tail -------------------------------------------------------------------------------------


def _check_entities(topics: tuple[str, ...]) -> list[str] | None:
    """Entity names as given (None: all catalog topics); exit 2 listing the known ones for an unknown name."""
    try:
        return [CATALOG.check_topic(topic) for topic in topics] or None
    except UnknownTopicError as exc:
        fail(exc.message, code=EXIT_INVALID_INPUT)


def _check_pattern(pattern: str | None) -> str | None:
    """The ``--type`` glob; exit 2 when it matches no catalog type (a typo would otherwise show nothing)."""
    if pattern is not None and not CATALOG.matching(pattern):
        fail(f"--type {pattern!r} matches no event type; known types: {', '.join(CATALOG.event_types)}", code=2)
    return pattern


def _time(timestamp_ms: int) -> str:
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _line(record: ReadRecord) -> str:
    """One human-readable line (rich markup) for ``tail``."""
    where = f"{record.topic}/{record.partition}@{record.offset}"
    key = record.key.decode("utf-8", errors="replace") if record.key is not None else "-"
    head = f"[dim]{_time(record.timestamp_ms)}[/] {escape(where)} "
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
    entities = _check_entities(topics)
    pattern = _check_pattern(pattern)
    with cli_errors():
        settings = load_settings()
        try:
            asyncio.run(_tail(settings, entities, pattern, from_beginning, limit, idle_timeout, as_json))
        except KeyboardInterrupt:
            raise click.exceptions.Exit(_EXIT_INTERRUPTED) from None


# -- history ----------------------------------------------------------------------------------


@click.command()
@click.option("-n", "count", type=click.IntRange(min=1), default=50, show_default=True, help="How many events.")
@click.option("--type", "pattern", metavar="PATTERN", help="Only event types matching this glob, e.g. 'payment:*'.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
def history(count: int, pattern: str | None, as_json: bool) -> None:
    """The last N events across all entity topics, newest last."""
    pattern = _check_pattern(pattern)
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
            table.add_row(_time(record.timestamp_ms), kind, escape(key), escape(problem), "")
            continue
        correlation = escape(record.event.metadata.correlation_id or "")
        table.add_row(
            _time(record.timestamp_ms), escape(record.event.event_type), escape(key), str(record.event_id), correlation
        )
    console().print(table)


# -- settings ---------------------------------------------------------------------------------


@click.command("settings")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def show_settings(as_json: bool) -> None:
    """The effective settings (EVENTBUS_* environment and profile defaults), secrets masked."""
    with cli_errors():
        values = load_settings().describe()
    if as_json:
        echo_json(values)
        return
    table = Table("setting", "value", title="EVENTBUS_* settings")
    for name, value in values.items():
        table.add_row(f"EVENTBUS_{name.upper()}", escape("" if value is None else str(value)))
    console().print(table)
