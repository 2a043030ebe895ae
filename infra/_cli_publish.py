"""``eventbus publish``: validate one event and publish it."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from schemas import CATALOG, Event

from ._cli_common import EXIT_INVALID_INPUT, cli_errors, echo_json, fail, spec_or_exit
from ._settings import Settings, load_settings

if TYPE_CHECKING:
    from producers import PublishResult

__all__ = ["publish"]


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
    from producers import EventPublisher  # noqa: PLC0415 - the Kafka client only once the event is valid

    config = settings.publisher_config("eventbus-cli")
    connection = settings.connection()
    publisher = EventPublisher(connection=connection, config=config)
    # The publisher bounds connect and delivery itself; this outer bound is a safety net over both.
    limit = connection.connect_timeout_s + config.delivery_timeout_s + 2 * connection.request_timeout_s
    async with asyncio.timeout(limit), publisher:
        return await publisher.publish(event)


@click.command()
@click.argument("event_type")
@click.option("--data", "data", required=True, help="The event as JSON: inline, @file.json, or - for stdin.")
def publish(event_type: str, data: str) -> None:
    """Validate and publish one EVENT_TYPE event; print where it was stored as one JSON line.

    Metadata is optional: a missing event id or time is filled in. Invalid JSON,
    invalid data, an unknown type or an event over the size limit exit with
    status 2 and nothing is sent.

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
