"""Dead letters: listing the ``system:error`` events and replaying their original records, once.

A replay writes a *mark* per dead letter to the replay log, the compacted topic
``system-replays`` of the topic spec, keyed by the dead letter's
``system-topic/partition/offset``. The marks live in Kafka, beside the dead
letters: they survive restarts, every operator machine sees the same ones, and
with the system topic's retention a mark never expires before its dead letter.
A replay publishes the original record first and its mark after the broker
acknowledged it: a replay cut short sends a record again at worst (consumers
skip it by event id), it never marks a record it did not send.

Example::

    report = await replay_dead_letters(conn, config, DeadLetterFilter(group="credits"))
    again = await replay_dead_letters(conn, config, DeadLetterFilter(group="credits"))
    assert not again.replayed  # already replayed: nothing is sent twice
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from consumers import REPLAY_HEADER
from producers import EventPublisher, KafkaConnection, OutgoingRecord, PublisherConfig
from schemas import SystemErrorEvent
from schemas.errors import CorruptMessageError, UnknownTopicError

from ._reader import existing_topics, read_all, read_raw
from ._topics import REPLAY_LOG_TOPIC

__all__ = [
    "DeadLetter",
    "DeadLetterFilter",
    "PlannedReplay",
    "ReplayMark",
    "ReplayReport",
    "list_dead_letters",
    "plan_replay",
    "read_replay_marks",
    "replay_dead_letters",
]

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called after each replayed record (and once with 0 before the first)."""


@dataclass(frozen=True, slots=True)
class ReplayMark:
    """The replay log's record of one dead letter: where its record went, when, how many times in all."""

    dead_letter: str
    replayed_to: str
    replayed_at: datetime
    times: int = 1
    host: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON shape (the replay log's value, and ``replayed`` in ``dlq list --json``)."""
        return {
            "dead_letter": self.dead_letter,
            "replayed_to": self.replayed_to,
            "replayed_at": self.replayed_at.isoformat(),
            "times": self.times,
            "host": self.host,
        }

    @classmethod
    def from_json(cls, value: bytes) -> ReplayMark:
        """Read a mark back; ``CorruptMessageError`` for a value that is not one."""
        try:
            data = json.loads(value)
            return cls(
                dead_letter=str(data["dead_letter"]),
                replayed_to=str(data["replayed_to"]),
                replayed_at=datetime.fromisoformat(data["replayed_at"]),
                times=int(data.get("times", 1)),
                host=str(data.get("host", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptMessageError(f"not a replay mark: {value[:80]!r}") from exc


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A ``system:error`` event, where it is stored on the system topic, and its replay mark if any."""

    topic: str
    partition: int
    offset: int
    letter: SystemErrorEvent
    replayed: ReplayMark | None = None

    @property
    def location(self) -> str:
        """``partition/offset`` of the dead letter on the system topic (what ``--letter`` takes)."""
        return f"{self.partition}/{self.offset}"

    @property
    def source(self) -> str:
        """``system-topic/partition/offset``: the replay header's value and the replay log's key."""
        return f"{self.topic}/{self.partition}/{self.offset}"

    @property
    def original(self) -> tuple[str, int, int]:
        """Topic, partition and offset of the record that failed (the same for every group that read it)."""
        return (self.letter.original_topic, self.letter.original_partition, self.letter.original_offset)

    @property
    def undecodable(self) -> bool:
        """Whether the original bytes could not be decoded (garbage, unknown schema fingerprint)."""
        return self.letter.original_event_type is None

    def as_dict(self) -> dict[str, Any]:
        """JSON shape for ``eventbus dlq list --json`` (original bytes as base64)."""
        return {
            "partition": self.partition,
            "offset": self.offset,
            "replayed": self.replayed.as_dict() if self.replayed else None,
            **self.letter.model_dump(mode="json"),
        }


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters to list or replay; every criterion given must hold.

    ``error`` matches the error type as a glob (``'*Timeout*'``) or a piece of
    the error message (case-insensitive). ``letters`` are ``partition/offset``
    locations as ``dlq list`` shows them; ``partition``, ``from_offset`` and
    ``to_offset`` (inclusive) select by position on the system topic.
    Example: ``DeadLetterFilter(group="credits", error="insufficient", since=yesterday)``
    """

    group: str | None = None
    event_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    error: str | None = None
    letters: frozenset[str] = frozenset()
    partition: int | None = None
    from_offset: int | None = None
    to_offset: int | None = None

    def matches(self, dead: DeadLetter) -> bool:
        """Whether ``dead`` passes every criterion."""
        letter = dead.letter
        checks = (
            self.group is None or letter.consumer_group == self.group,
            self.event_type is None or fnmatch.fnmatchcase(letter.original_event_type or "", self.event_type),
            self.since is None or letter.last_failure_at >= self.since,
            self.until is None or letter.last_failure_at <= self.until,
            self.error is None or _error_matches(self.error, letter),
            not self.letters or dead.location in self.letters,
            self.partition is None or dead.partition == self.partition,
            self.from_offset is None or dead.offset >= self.from_offset,
            self.to_offset is None or dead.offset <= self.to_offset,
        )
        return all(checks)


def _error_matches(pattern: str, letter: SystemErrorEvent) -> bool:
    return fnmatch.fnmatchcase(letter.error_type, pattern) or pattern.casefold() in letter.error_message.casefold()


async def read_replay_marks(connection: KafkaConnection, *, missing_ok: bool = False) -> dict[str, ReplayMark]:
    """The latest mark of every replayed dead letter, by ``system-topic/partition/offset``.

    ``UnknownTopicError`` when the replay log does not exist (``eventbus topics apply`` creates it),
    unless ``missing_ok``: then nothing was marked. A record that is not a mark is skipped.
    Example: ``"t.system/0/12" in await read_replay_marks(conn)``
    """
    name = connection.topic(REPLAY_LOG_TOPIC)
    if missing_ok and name not in await existing_topics(connection):
        return {}
    marks: dict[str, ReplayMark] = {}
    async for record in read_raw(connection, [name]):
        if record.key is None:
            continue
        key = record.key.decode("utf-8", errors="replace")
        if record.value is None:  # a tombstone forgets the mark
            marks.pop(key, None)
            continue
        try:
            marks[key] = ReplayMark.from_json(record.value)
        except CorruptMessageError:
            continue
    return marks


async def list_dead_letters(
    connection: KafkaConnection, selection: DeadLetterFilter | None = None, /, **criteria: Any
) -> list[DeadLetter]:
    """The dead letters on the system topic, oldest failure first, with their replay marks.

    ``selection`` and ``criteria`` (the fields of ``DeadLetterFilter``, which win) filter them.
    Without a replay log (topics applied by an older version) no dead letter is marked.
    Example: ``await list_dead_letters(conn, group="credits", event_type="session:*")``
    """
    chosen = replace(selection or DeadLetterFilter(), **criteria)

    async def stored() -> list[DeadLetter]:
        return [
            DeadLetter(record.topic, record.partition, record.offset, record.event)
            async for record in read_all(connection, ["system"])
            if isinstance(record.event, SystemErrorEvent)
        ]

    # Two independent reads: side by side, a listing costs one round of connects and fetches, not two.
    marks, letters = await asyncio.gather(read_replay_marks(connection, missing_ok=True), stored())
    marked = [replace(dead, replayed=marks.get(dead.source)) for dead in letters]
    selected = [dead for dead in marked if chosen.matches(dead)]
    selected.sort(key=lambda d: (d.letter.last_failure_at, d.partition, d.offset))
    return selected


@dataclass(frozen=True, slots=True)
class PlannedReplay:
    """One record to send, and the dead letters it settles (every group that failed on that record)."""

    record: OutgoingRecord
    dead_letters: tuple[DeadLetter, ...]

    def as_dict(self, replayed_to: str | None = None) -> dict[str, Any]:
        """JSON shape of one entry of ``dlq replay --json``: exactly what is (or would be) sent."""
        first = self.dead_letters[0].letter
        topic, partition, offset = self.dead_letters[0].original
        return {
            "original": f"{topic}/{partition}/{offset}",
            "topic": self.record.topic,
            "key": self.record.key.decode("utf-8", errors="replace") if self.record.key is not None else None,
            "event_type": first.original_event_type,
            "event_id": str(first.original_event_id) if first.original_event_id else None,
            "headers": [[key, value.decode("utf-8", errors="replace")] for key, value in self.record.headers],
            "value_bytes": len(self.record.value),
            "value_sha256": hashlib.sha256(self.record.value).hexdigest(),
            "dead_letters": [dead.location for dead in self.dead_letters],
            "groups": sorted({dead.letter.consumer_group for dead in self.dead_letters}),
            "replayed_to": replayed_to,
        }


@dataclass
class ReplayReport:
    """What ``replay_dead_letters`` sent (or would send, on a dry run), and what it left out and why."""

    dry_run: bool
    replayed: list[dict[str, Any]] = field(default_factory=list)
    skipped_replayed: int = 0
    """Selected dead letters replayed before (``--again`` replays them)."""
    skipped_undecodable: int = 0
    """Selected dead letters whose bytes no decoder accepted (``--include-undecodable`` replays them)."""
    left_for_later: int = 0
    """Records over ``max_count``."""

    def as_dict(self) -> dict[str, Any]:
        """JSON shape for ``eventbus dlq replay --json``."""
        return {
            "dry_run": self.dry_run,
            "count": len(self.replayed),
            "dead_letters": sum(len(entry["dead_letters"]) for entry in self.replayed),
            "skipped_replayed": self.skipped_replayed,
            "skipped_undecodable": self.skipped_undecodable,
            "left_for_later": self.left_for_later,
            "replayed": self.replayed,
        }


def _replayed_record(dead: DeadLetter) -> OutgoingRecord:
    letter = dead.letter
    headers = [(h.key, h.value or b"") for h in letter.original_headers if h.key != REPLAY_HEADER]
    headers.append((REPLAY_HEADER, dead.source.encode()))
    return OutgoingRecord(letter.original_topic, letter.original_key, letter.original_value, headers)


def plan_replay(
    letters: Iterable[DeadLetter],
    *,
    again: bool = False,
    include_undecodable: bool = False,
    max_count: int | None = None,
    report: ReplayReport | None = None,
) -> list[PlannedReplay]:
    """The records a replay sends for ``letters``: one per original record, oldest failure first.

    Dead letters already replayed are left out unless ``again``, undecodable
    ones unless ``include_undecodable``. The dead letters of several groups for
    the same original record (topic, partition, offset) share one send: every
    group on that topic sees it. ``report`` (if given) counts what was left out.
    Example: ``plan_replay(await list_dead_letters(conn), max_count=10)``
    """
    counts = report or ReplayReport(dry_run=True)
    by_original: dict[tuple[str, int, int], list[DeadLetter]] = {}
    for dead in letters:
        if dead.replayed is not None and not again:
            counts.skipped_replayed += 1
        elif dead.undecodable and not include_undecodable:
            counts.skipped_undecodable += 1
        else:
            by_original.setdefault(dead.original, []).append(dead)
    plans = [PlannedReplay(_replayed_record(group[0]), tuple(group)) for group in by_original.values()]
    if max_count is not None and len(plans) > max_count:
        counts.left_for_later += len(plans) - max_count
        plans = plans[:max_count]
    return plans


def _mark(connection: KafkaConnection, dead: DeadLetter, replayed_to: str, now: datetime) -> OutgoingRecord:
    times = dead.replayed.times + 1 if dead.replayed is not None else 1
    mark = ReplayMark(dead.source, replayed_to, now, times, socket.gethostname())
    value = json.dumps(mark.as_dict()).encode()
    headers = [("content-type", b"application/json")]
    return OutgoingRecord(connection.topic(REPLAY_LOG_TOPIC), dead.source.encode(), value, headers)


async def replay_dead_letters(
    connection: KafkaConnection,
    publisher_config: PublisherConfig,
    selection: DeadLetterFilter | None = None,
    /,
    *,
    again: bool = False,
    include_undecodable: bool = False,
    max_count: int | None = None,
    dry_run: bool = False,
    rate_per_s: float | None = None,
    progress: Progress | None = None,
    **criteria: Any,
) -> ReplayReport:
    """Publish the original bytes, key and headers of the selected dead letters to their original topic, once.

    Which records (see ``plan_replay``): one per original record, not the ones
    replayed before unless ``again``, no undecodable ones unless
    ``include_undecodable``, at most ``max_count``, at most ``rate_per_s`` a
    second. Each carries an ``eventbus-replayed-from`` header naming its dead
    letter; after the broker acknowledged it, each dead letter it settles is
    marked in the replay log. A dry run sends and marks nothing and reports
    exactly the records a real run would send. ``criteria`` are
    ``DeadLetterFilter`` fields. Groups that record effects per event id apply
    a replayed event once.
    Example: ``await replay_dead_letters(conn, config, group="credits", max_count=10)``
    """
    log = connection.topic(REPLAY_LOG_TOPIC)
    if log not in await existing_topics(connection):  # checked first: a replay must never go unmarked
        raise UnknownTopicError(
            log, reason=f"the replay log {log!r} does not exist; create it with `eventbus topics apply`"
        )
    letters = await list_dead_letters(connection, selection, **criteria)
    report = ReplayReport(dry_run=dry_run)
    plans = plan_replay(
        letters, again=again, include_undecodable=include_undecodable, max_count=max_count, report=report
    )
    if dry_run or not plans:
        report.replayed = [plan.as_dict() for plan in plans]
        return report
    interval = 1.0 / rate_per_s if rate_per_s else 0.0
    if progress is not None:
        progress(0, len(plans))
    async with EventPublisher(connection=connection, config=publisher_config) as publisher:
        started = time.monotonic()
        for index, plan in enumerate(plans):
            if interval:
                await asyncio.sleep(max(0.0, started + index * interval - time.monotonic()))
            delivery = await publisher.publish_record(plan.record)
            replayed_to = f"{delivery.topic}/{delivery.partition}/{delivery.offset}"
            now = datetime.now(UTC)
            marks = [_mark(connection, dead, replayed_to, now) for dead in plan.dead_letters]
            await asyncio.gather(*(publisher.publish_record(mark) for mark in marks))
            report.replayed.append(plan.as_dict(replayed_to))
            if progress is not None:
                progress(index + 1, len(plans))
    return report
