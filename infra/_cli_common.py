"""Helpers every ``eventbus`` command shares: errors to exit codes, JSON and rich output, times."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import click
from rich.console import Console

from schemas import CATALOG, EventSpec
from schemas.errors import EventBusError, EventValidationError, UnknownEventTypeError

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INVALID_INPUT",
    "cli_errors",
    "console",
    "echo_json",
    "fail",
    "parse_since",
    "spec_or_exit",
]

_PIPE_WIDTH = 200
EXIT_FAILURE = 1
EXIT_INVALID_INPUT = 2


def fail(message: str, *, code: int = EXIT_FAILURE) -> NoReturn:
    """Print ``error: message`` on stderr and leave with ``code`` (no traceback)."""
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn eventbus errors into a clean message: exit 2 for invalid input, 1 for everything else.

    aiokafka's own log lines (each failed connection attempt) are kept off the
    terminal: the error that ends the command says what went wrong.
    """
    client_log = logging.getLogger("aiokafka")
    if not client_log.handlers:
        client_log.addHandler(logging.NullHandler())
    try:
        yield
    except EventValidationError as exc:
        details = "".join(f"\n  {path}: {problem}" for path, problem in exc.errors)
        fail(f"{exc.message}{details}\ninvalid fields: {', '.join(exc.fields)}", code=EXIT_INVALID_INPUT)
    except UnknownEventTypeError as exc:
        fail(exc.message, code=EXIT_INVALID_INPUT)
    except EventBusError as exc:
        fail(exc.message)


def echo_json(value: Any, *, indent: int | None = None) -> None:
    """Print one JSON document on stdout (one line unless ``indent`` is given)."""
    click.echo(json.dumps(value, indent=indent, ensure_ascii=False))


def spec_or_exit(event_type: str) -> EventSpec:
    """The catalog spec of ``event_type``; exit 2 naming the known types when there is none."""
    with cli_errors():
        return CATALOG.spec(event_type)


def console() -> Console:
    """A rich console on the current stdout (created per call, so test runners can capture it).

    Not a terminal (a pipe, a file): wide enough that tables are not cut at 80 columns.
    """
    return Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else _PIPE_WIDTH)


_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(value: str | None) -> datetime | None:
    """``--since``: ISO-8601 (UTC when no zone is given) or relative like ``15m``, ``2h``, ``1d``; exit 2 if neither."""
    if value is None:
        return None
    match = _RELATIVE.match(value.strip())
    if match:
        try:
            return datetime.now(UTC) - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        except OverflowError:
            fail(f"--since {value!r} reaches before year 1", code=EXIT_INVALID_INPUT)
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        fail(f"--since {value!r} is neither an ISO-8601 time nor a duration like 15m, 2h, 1d", code=EXIT_INVALID_INPUT)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
