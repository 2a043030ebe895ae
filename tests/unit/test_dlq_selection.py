"""Which dead letters a replay sends, without a broker: filters, marks, undecodable ones, one send per record."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumers import REPLAY_HEADER
from infra._dlq import DeadLetter, DeadLetterFilter, ReplayMark, ReplayReport, plan_replay
from schemas import SystemErrorEvent
from schemas.errors import CorruptMessageError
from tests.events_factory import example_event

_AT = datetime(2025, 6, 2, 14, 0, tzinfo=UTC)


def _dead(offset: int, *, partition: int = 0, original_offset: int | None = None, **fields: Any) -> DeadLetter:
    values: dict[str, Any] = {
        "consumer_group": "credits",
        "original_topic": "t.session",
        "original_partition": 1,
        "original_offset": offset if original_offset is None else original_offset,
        "original_value": b"\xc3\x01bytes",
        "original_event_type": "session:completed",
        "error_type": "FatalHandlerError",
        "error_message": "insufficient credits for user-1",
        "last_failure_at": _AT + timedelta(minutes=offset),
        **fields,
    }
    letter = example_event("system:error", **values)
    assert isinstance(letter, SystemErrorEvent)
    return DeadLetter("t.system", partition, offset, letter)


def _mark(dead: DeadLetter) -> DeadLetter:
    mark = ReplayMark(dead.source, "t.session/1/99", _AT)
    return DeadLetter(dead.topic, dead.partition, dead.offset, dead.letter, mark)


def test_every_criterion_given_must_hold() -> None:
    letters = [
        _dead(0),
        _dead(1, consumer_group="cache", error_type="BrokerTimeoutError", error_message="redis timed out"),
        _dead(2, partition=2, original_event_type="session:created"),
    ]

    def chosen(**criteria: Any) -> list[int]:
        return [d.offset for d in letters if DeadLetterFilter(**criteria).matches(d)]

    assert chosen() == [0, 1, 2]
    assert chosen(group="cache") == [1]
    assert chosen(event_type="session:c*") == [0, 1, 2]
    assert chosen(event_type="session:created") == [2]
    assert chosen(error="*Timeout*") == [1]
    assert chosen(error="INSUFFICIENT") == [0, 2]
    assert chosen(since=_AT + timedelta(minutes=1)) == [1, 2]
    assert chosen(until=_AT + timedelta(minutes=1)) == [0, 1]
    assert chosen(letters=frozenset({"2/2", "0/1"})) == [1, 2]
    assert chosen(partition=0, from_offset=1, to_offset=1) == [1]
    assert chosen(group="credits", error="insufficient", partition=2) == [2]


def test_replayed_and_undecodable_letters_are_left_out_unless_asked_for() -> None:
    replayed = _mark(_dead(0))
    garbage = _dead(1, original_event_type=None, error_type="CorruptMessageError")
    pending = _dead(2)
    report = ReplayReport(dry_run=True)

    plans = plan_replay([replayed, garbage, pending], report=report)

    assert [plan.dead_letters for plan in plans] == [(pending,)]
    assert (report.skipped_replayed, report.skipped_undecodable) == (1, 1)
    everything = plan_replay([replayed, garbage, pending], again=True, include_undecodable=True)
    assert [plan.dead_letters[0] for plan in everything] == [replayed, garbage, pending]


def test_one_record_dead_lettered_by_three_groups_is_one_send_settling_all_three() -> None:
    letters = [_dead(n, original_offset=7, consumer_group=group) for n, group in enumerate(("a", "b", "c"))]

    (plan,) = plan_replay(letters)

    assert plan.dead_letters == tuple(letters)
    assert plan.record.topic == "t.session"
    assert plan.record.value == letters[0].letter.original_value
    assert (REPLAY_HEADER, b"t.system/0/0") in plan.record.headers
    assert plan.as_dict()["groups"] == ["a", "b", "c"]


def test_max_counts_records_not_dead_letters() -> None:
    letters = [_dead(n, original_offset=n // 2, consumer_group=f"g{n % 2}") for n in range(6)]
    report = ReplayReport(dry_run=True)

    plans = plan_replay(letters, max_count=2, report=report)

    assert [len(plan.dead_letters) for plan in plans] == [2, 2]
    assert report.left_for_later == 1


def test_a_replay_mark_reads_back_as_written() -> None:
    mark = ReplayMark("t.system/0/3", "t.session/1/99", _AT, times=2, host="ops-1")

    assert ReplayMark.from_json(json.dumps(mark.as_dict()).encode()) == mark


def test_a_record_that_is_not_a_mark_is_a_corrupt_message_error() -> None:
    with pytest.raises(CorruptMessageError):
        ReplayMark.from_json(b"[1, 2]")
