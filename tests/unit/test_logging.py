"""Log lines carry the event's coordinates in both formats."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from infra._logging import JsonFormatter, TextFormatter, configure_logging

_COORDINATES = {"group": "credits", "topic": "t.session", "partition": 2, "offset": 41, "event_type": "session:created"}


def _record(message: str = "handler failed, retrying", /, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("consumers.runner", logging.WARNING, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return record


def test_text_lines_carry_the_group_topic_partition_and_offset_of_the_json_lines() -> None:
    record = _record(**_COORDINATES)

    text = TextFormatter().format(record)
    entry = json.loads(JsonFormatter().format(record))

    assert text.split(" WARNING ", 1)[1] == (
        "handler failed, retrying group=credits topic=t.session partition=2 offset=41 event_type=session:created"
    )
    assert {key: entry[key] for key in _COORDINATES} == _COORDINATES


def _fail() -> None:
    raise ValueError("boom")


def test_text_values_with_spaces_are_quoted_and_the_traceback_stays_below_the_line() -> None:
    try:
        _fail()
    except ValueError:
        record = _record(error="card declined")
        record.exc_info = sys.exc_info()

    first, *rest = TextFormatter().format(record).splitlines()

    assert first.endswith('handler failed, retrying error="card declined"')
    assert rest[0].startswith("Traceback")


def test_a_line_without_context_is_the_plain_format() -> None:
    assert TextFormatter().format(_record("started")).endswith(" WARNING started")


@pytest.mark.parametrize(("json_format", "kind"), [(True, JsonFormatter), (False, TextFormatter)])
def test_configure_logging_picks_the_formatter(json_format: bool, kind: type[logging.Formatter]) -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    try:
        configure_logging(json_format=json_format)
        assert isinstance(root.handlers[0].formatter, kind)
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
