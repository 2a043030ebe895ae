"""Helpers every ``eventbus`` command shares: errors to exit codes, JSON and rich output, times, filters."""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console

from schemas import CATALOG, EventSpec
from schemas.errors import (
    EventBusError,
    EventValidationError,
    MessageTooLargeError,
    UnknownEventTypeError,
    UnknownTopicError,
)

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INVALID_INPUT",
    "check_entities",
    "check_pattern",
    "cli_errors",
    "console",
    "echo_json",
    "fail",
    "parse_since",
    "reading_database_url",
    "record_time",
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
def stop_signals_while_starting() -> Iterator[list[int]]:
    """Record SIGINT and SIGTERM until the event loop installs its own handlers, instead of dying of them.

    An orchestrator may stop a process that has only just started. A long-running command checks the list once
    its loop's handlers are in place and stops cleanly (exit 0) if it is not empty. The previous handlers come
    back on exit. Example: ``with stop_signals_while_starting() as early: asyncio.run(serve(early))``
    """
    early: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield early
        return
    previous = {
        signum: signal.signal(signum, lambda received, _frame: early.append(received))
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield early
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: set outside Python, which cannot be put back from here
                signal.signal(signum, handler)


def serve_metrics(port: int | None, host: str) -> None:
    """Serve Prometheus metrics on ``host:port`` from a background thread (nothing when ``port`` is None).

    Example: ``serve_metrics(9100, "127.0.0.1")``
    """
    if port is None:
        return
    from prometheus_client import start_http_server  # noqa: PLC0415 - only when asked

    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        raise click.ClickException(f"cannot serve metrics on {host}:{port}: {exc}") from exc


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
        fail(_validation_message(exc), code=EXIT_INVALID_INPUT)
    except (UnknownEventTypeError, MessageTooLargeError) as exc:
        fail(exc.message, code=EXIT_INVALID_INPUT)
    except EventBusError as exc:
        fail(exc.message)


def _validation_message(exc: EventValidationError) -> str:
    """Each problem once: on the line itself when there is one, else one indented line each."""
    if len(exc.errors) <= 1:
        return exc.message
    details = "".join(f"\n  {path}: {problem}" for path, problem in exc.errors)
    return f"invalid {exc.event_type} event, {len(exc.errors)} problems:{details}"


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


def parse_since(value: str | None, *, option: str = "--since") -> datetime | None:
    """A time option: ISO-8601 (UTC when no zone is given) or relative like ``15m``, ``2h``, ``1d``; exit 2 if neither.

    Example: ``parse_since("2h")`` is two hours ago; ``parse_since(value, option="--until")`` names that option.
    """
    if value is None:
        return None
    match = _RELATIVE.match(value.strip())
    if match:
        try:
            return datetime.now(UTC) - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        except OverflowError:
            fail(f"{option} {value!r} reaches before year 1", code=EXIT_INVALID_INPUT)
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        fail(f"{option} {value!r} is neither an ISO-8601 time nor a duration like 15m, 2h, 1d", code=EXIT_INVALID_INPUT)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def check_entities(topics: tuple[str, ...]) -> list[str] | None:
    """Entity names as given (None: all catalog topics); exit 2 listing the known ones for an unknown name."""
    try:
        return [CATALOG.check_topic(topic) for topic in topics] or None
    except UnknownTopicError as exc:
        fail(exc.message, code=EXIT_INVALID_INPUT)


def check_pattern(pattern: str | None) -> str | None:
    """A ``--type`` glob; exit 2 when it matches no catalog type (a typo would otherwise show nothing)."""
    if pattern is not None and not CATALOG.matching(pattern):
        known = ", ".join(CATALOG.event_types)
        fail(f"--type {pattern!r} matches no event type; known types: {known}", code=EXIT_INVALID_INPUT)
    return pattern


def record_time(timestamp_ms: int) -> str:
    """A record timestamp as ISO-8601 UTC with milliseconds, e.g. ``2025-06-02T14:00:00.000Z``."""
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def reading_database_url(url: str) -> str:
    """The database URL for a command that only reads: an empty in-memory SQLite one when the file does not exist.

    Reading must not leave an ``eventbus.sqlite`` behind: a missing SQLite file
    holds no rows, and neither does a fresh in-memory database with the same tables.
    Example: ``reading_database_url("sqlite:///missing.sqlite") == "sqlite://"``
    """
    if not url.startswith("sqlite"):
        return url
    scheme, sep, rest = url.partition(":///")
    path = rest.split("?", 1)[0] if sep else ""
    if not path or path == ":memory:" or Path(path).exists():
        return url
    return f"{scheme}://"
