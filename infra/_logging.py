"""Structured logs: one JSON object per line, or plain text, with the event's coordinates either way."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging"]

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_FIRST = ("group", "topic", "partition", "offset")
"""Context keys that come first in plain text, in this order; any other ``extra`` follows."""


def _context(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra`` fields of a record (group, topic, partition, offset, event_type, event_id…)."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON; ``extra`` fields (group, topic, partition, offset,
    event_type, event_id, correlation_id…) become keys."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON line."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_context(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """Plain text: time, level, message, then the same ``extra`` fields as the JSON lines, as ``key=value``.

    Example line: ``2025-06-02 14:00:00,123 WARNING retrying group=credits topic=session partition=2 offset=41``
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """One line (plus the traceback, if any)."""
        context = _context(record)
        ordered = [key for key in _FIRST if key in context] + [key for key in context if key not in _FIRST]
        pairs = " ".join(f"{key}={_text(context[key])}" for key in ordered)
        line = super().format(record)
        if not pairs:
            return line
        head, newline, trace = line.partition("\n")
        return f"{head} {pairs}{newline}{trace}"


def _text(value: Any) -> str:
    """A value for ``key=value``: quoted (JSON) when it has spaces, quotes or is empty."""
    shown = str(value)
    return json.dumps(shown) if not shown or any(c in shown for c in ' "=\n') else shown


def configure_logging(*, level: str = "INFO", json_format: bool = True) -> None:
    """Log to stderr, as JSON lines or plain text. Example: ``configure_logging(level="DEBUG")``"""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
