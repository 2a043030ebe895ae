"""Dead letters: listing the ``system:error`` events and replaying their original records."""

from __future__ import annotations

import asyncio
import fnmatch
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from consumers import REPLAY_HEADER
from producers import EventPublisher, KafkaConnection, OutgoingRecord, PublisherConfig
from schemas import SystemErrorEvent

from ._reader import read_all

__all__ = ["DeadLetter", "ReplayReport", "list_dead_letters", "replay_dead_letters"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A ``system:error`` event and where it is stored on the system topic."""

    partition: int
    offset: int
    letter: SystemErrorEvent

    @property
    def location(self) -> str:
        """``system-topic/partition/offset`` of the dead letter."""
        return f"{self.partition}/{self.offset}"

    def as_dict(self) -> dict[str, Any]:
        """JSON shape for ``eventbus dlq list --json`` (original bytes as base64)."""
        return {"partition": self.partition, "offset": self.offset, **self.letter.model_dump(mode="json")}


@dataclass
class ReplayReport:
    """What ``replay_dead_letters`` did (or would do, on a dry run)."""

    dry_run: bool
    replayed: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON shape for ``eventbus dlq replay --json``."""
        return {"dry_run": self.dry_run, "count": len(self.replayed), "replayed": self.replayed}


def _selected(letter: SystemErrorEvent, group: str | None, event_type: str | None, since: datetime | None) -> bool:
    if group is not None and letter.consumer_group != group:
        return False
    if event_type is not None and not fnmatch.fnmatchcase(letter.original_event_type or "", event_type):
        return False
    return since is None or letter.last_failure_at >= since


async def list_dead_letters(
    connection: KafkaConnection,
    *,
    group: str | None = None,
    event_type: str | None = None,
    since: datetime | None = None,
) -> list[DeadLetter]:
    """The dead letters on the system topic, oldest first, filtered by group, event-type glob and time.

    Example: ``await list_dead_letters(conn, group="credits", event_type="session:*")``
    """
    return [
        DeadLetter(record.partition, record.offset, record.event)
        async for record in read_all(connection, ["system"])
        if isinstance(record.event, SystemErrorEvent) and _selected(record.event, group, event_type, since)
    ]


def _replayed_record(connection: KafkaConnection, dead: DeadLetter) -> OutgoingRecord:
    letter = dead.letter
    source = f"{connection.topic('system')}/{dead.partition}/{dead.offset}".encode()
    headers = [(h.key, h.value or b"") for h in letter.original_headers if h.key != REPLAY_HEADER]
    headers.append((REPLAY_HEADER, source))
    return OutgoingRecord(letter.original_topic, letter.original_key, letter.original_value, headers)


async def replay_dead_letters(
    connection: KafkaConnection,
    publisher_config: PublisherConfig,
    *,
    group: str | None = None,
    event_type: str | None = None,
    since: datetime | None = None,
    max_count: int | None = None,
    dry_run: bool = False,
    rate_per_s: float | None = None,
) -> ReplayReport:
    """Publish the original bytes, key and headers of the selected dead letters to their original topic.

    A ``eventbus-replayed-from`` header names the dead letter. Every group on
    that topic sees the record again; groups that record effects per event id
    apply it once, so replaying twice does not double-apply.
    Example: ``await replay_dead_letters(conn, config, group="credits", max_count=10)``
    """
    letters = await list_dead_letters(connection, group=group, event_type=event_type, since=since)
    if max_count is not None:
        letters = letters[:max_count]
    report = ReplayReport(dry_run=dry_run)
    if dry_run:
        report.replayed = [_report_entry(dead, None) for dead in letters]
        return report
    interval = 1.0 / rate_per_s if rate_per_s else 0.0
    async with EventPublisher(connection=connection, config=publisher_config) as publisher:
        started = time.monotonic()
        for index, dead in enumerate(letters):
            if interval:
                await asyncio.sleep(max(0.0, started + index * interval - time.monotonic()))
            delivery = await publisher.publish_record(_replayed_record(connection, dead))
            report.replayed.append(_report_entry(dead, f"{delivery.topic}/{delivery.partition}/{delivery.offset}"))
    return report


def _report_entry(dead: DeadLetter, replayed_to: str | None) -> dict[str, Any]:
    letter = dead.letter
    return {
        "dead_letter": dead.location,
        "group": letter.consumer_group,
        "event_type": letter.original_event_type,
        "event_id": str(letter.original_event_id) if letter.original_event_id else None,
        "original": f"{letter.original_topic}/{letter.original_partition}/{letter.original_offset}",
        "replayed_to": replayed_to,
    }
