"""Reading events back from the entity topics without a consumer group (tail and history).

Partitions are assigned explicitly (no group, nothing committed), so reading
never disturbs the services' consumer groups. Undecodable records are returned
with their ``DecodeError``, never raised.

Example::

    async for record in tail_records(settings.connection(), ["session"], pattern="session:*"):
        print(record.event_type, record.offset)
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from producers import KafkaConnection, codec_for, connect_with_retry, convert_kafka_error, kafka_admin
from schemas import CATALOG, AvroCodec, Event
from schemas.errors import BrokerError, CorruptMessageError, DecodeError, UnknownTopicError

__all__ = [
    "RawRecord",
    "ReadRecord",
    "count_event_types",
    "existing_topics",
    "partition_ends",
    "read_all",
    "read_history",
    "read_raw",
    "tail_records",
]

_POLL_MS = 500
_FETCH_WAIT_MS = 200
_MAX_RECORDS = 1000


@dataclass(frozen=True, slots=True)
class ReadRecord:
    """One record read back: its place, its raw bytes, and the decoded event or the decode error.

    Exactly one of ``event`` and ``error`` is set.
    Example: ``record.event.event_id if record.event else record.error.message``
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    value: bytes | None = field(repr=False)
    event: Event | None = None
    error: DecodeError | None = None

    def header(self, name: str) -> str | None:
        """The first header called ``name``, decoded as UTF-8 (None when absent)."""
        for key, value in self.headers:
            if key == name:
                return value.decode("utf-8", errors="replace")
        return None

    @property
    def event_type(self) -> str | None:
        """The decoded event's type, else the ``event-type`` header."""
        return self.event.event_type if self.event is not None else self.header("event-type")

    @property
    def event_id(self) -> str | None:
        """The decoded event's id, else the ``event-id`` header."""
        return str(self.event.event_id) if self.event is not None else self.header("event-id")

    def matches(self, pattern: str | None) -> bool:
        """Whether the event type matches a glob such as ``session:*`` (always, without a pattern).

        An undecodable record matches by its ``event-type`` header; without one, only when there is no pattern.
        """
        if pattern is None:
            return True
        event_type = self.event_type
        return event_type is not None and fnmatch.fnmatchcase(event_type, pattern)

    @property
    def order(self) -> tuple[int, str, int, int]:
        """Sort key of "when it happened": the event's ``occurred_at`` (microseconds), else the record timestamp.

        Record timestamps have millisecond resolution, so events published in the same millisecond to
        different partitions would otherwise come back in an arbitrary order.
        """
        when = self.timestamp_ms * 1000
        if self.event is not None:
            occurred = self.event.metadata.occurred_at
            when = int(occurred.timestamp()) * 1_000_000 + occurred.microsecond
        return (when, self.topic, self.partition, self.offset)

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of ``eventbus tail --json`` and ``history --json`` (``error`` replaces ``event``)."""
        out: dict[str, Any] = {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "key": self.key.decode("utf-8", errors="replace") if self.key is not None else None,
            "event_type": self.event_type,
            "event_id": self.event_id,
        }
        if self.event is not None:
            out["event"] = self.event.model_dump(mode="json")
        else:
            out["error"] = f"{type(self.error).__name__}: {self.error.message if self.error else 'unknown'}"
        return out


def _header_type(record: ConsumerRecord[bytes, bytes]) -> str | None:
    for key, value in record.headers or ():
        if key == "event-type":
            return bytes(value).decode("utf-8", errors="replace")
    return None


def _decode(codec: AvroCodec, record: ConsumerRecord[bytes, bytes]) -> ReadRecord:
    value = record.value
    event: Event | None = None
    error: DecodeError | None = None
    if value is None:
        error = CorruptMessageError("tombstone: the record has no value")
    else:
        try:
            event = codec.decode(value)
        except DecodeError as exc:
            error = exc
    return ReadRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
        key=record.key,
        headers=tuple((key, bytes(val)) for key, val in record.headers or ()),
        value=value,
        event=event,
        error=error,
    )


def _skip_by_header(record: ConsumerRecord[bytes, bytes], pattern: str | None) -> bool:
    """True when the ``event-type`` header already shows the record does not match (saves decoding it)."""
    if pattern is None:
        return False
    header = _header_type(record)
    return header is not None and not fnmatch.fnmatchcase(header, pattern)


async def existing_topics(connection: KafkaConnection) -> set[str]:
    """The topic names on the broker, from a metadata request for all topics (it never creates one)."""
    async with kafka_admin(connection, "listing topics") as admin:
        return await admin.topic_names()


async def _resolve(
    connection: KafkaConnection, entities: Sequence[str] | None, topics: Sequence[str] | None = None
) -> dict[str, list[int]]:
    """Partition ids of the entity topics (all catalog topics by default), or of ``topics`` by full name.

    They must exist. Checking first matters: a metadata request naming a topic
    the broker does not have creates it where auto-creation is on (always, on Tansu).
    """
    if topics is None:
        wanted = [CATALOG.check_topic(entity) for entity in (entities or CATALOG.topics)]
        names = [connection.topic(entity) for entity in dict.fromkeys(wanted)]
    else:
        names = list(dict.fromkeys(topics))
    present = await existing_topics(connection)
    missing = [name for name in names if name not in present]
    if missing:
        reason = f"topic {missing[0]!r} does not exist on the broker; create it with `eventbus topics apply`"
        raise UnknownTopicError(missing[0], reason=reason)
    async with kafka_admin(connection, "describing topics") as admin:
        described = await admin.describe_topics(names)
    partitions = {topic.name: [p.partition for p in topic.partitions] for topic in described}
    return {name: partitions.get(name, []) for name in names}


@asynccontextmanager
async def _assigned(
    connection: KafkaConnection,
    entities: Sequence[str] | None,
    topics: Sequence[str] | None = None,
    *,
    fetch_max_wait_ms: int = _FETCH_WAIT_MS,
) -> AsyncIterator[tuple[AIOKafkaConsumer, list[TopicPartition]]]:
    """A started consumer without a group, assigned every partition of the (existing) topics.

    ``fetch_max_wait_ms``: a live reader wants early fetches; a reader of history big ones (the default)."""
    described = await _resolve(connection, entities, topics)
    consumer = AIOKafkaConsumer(
        **connection.client_options(),
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_max_wait_ms,
        isolation_level="read_committed",  # records of aborted transactions are never shown
    )
    timeout = connection.request_timeout_s
    try:
        await connect_with_retry(consumer.start, connection, "consumer")
        partitions: list[TopicPartition] = []
        for name, fallback in described.items():
            # The consumer's bootstrap metadata lists every topic on Tansu, none on Apache Kafka
            # (an empty topic list means "no topics" there): then the admin's description is used.
            ids = consumer.partitions_for_topic(name) or fallback
            if not ids:
                raise BrokerError(f"no partition metadata for topic {name!r}")
            partitions += [TopicPartition(name, pid) for pid in sorted(ids)]
        consumer.assign(partitions)
        yield consumer, partitions
    except (TimeoutError, KafkaError) as exc:
        raise convert_kafka_error(exc, f"reading {', '.join(described)}") from exc
    finally:
        await _stop(consumer, timeout)


async def _stop(consumer: AIOKafkaConsumer, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(consumer.stop(), timeout=timeout_s)
    except (TimeoutError, KafkaError) as exc:
        raise convert_kafka_error(exc, "closing the consumer") from exc


async def _getmany(
    consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition], timeout_ms: int, request_timeout_s: float
) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
    batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = await asyncio.wait_for(
        consumer.getmany(*partitions, timeout_ms=timeout_ms, max_records=_MAX_RECORDS),
        timeout=timeout_ms / 1000 + request_timeout_s,
    )
    return batch


async def _high_watermarks(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], timeout_s: float
) -> dict[TopicPartition, int]:
    """The high watermark of each partition, learned from a fetch.

    Not ``end_offsets()``/``seek_to_end()``: on the embedded Tansu broker the
    ListOffsets answer for "latest" is wrong (the first offset of the last batch
    + 1), while every fetch response carries the true high watermark, even for
    an empty partition. So fetch once from the beginning (the records are
    dropped: the caller seeks afterwards) and read ``consumer.highwater(tp)``.
    """
    await asyncio.wait_for(consumer.seek_to_beginning(*partitions), timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while unknown := [tp for tp in partitions if consumer.highwater(tp) is None]:
        if time.monotonic() > deadline:
            raise BrokerError(f"no fetch answer for {unknown[0].topic}/{unknown[0].partition} within {timeout_s:g} s")
        await _getmany(consumer, unknown, _FETCH_WAIT_MS, timeout_s)
    return {tp: int(consumer.highwater(tp)) for tp in partitions}


async def tail_records(
    connection: KafkaConnection,
    entities: Sequence[str] | None = None,
    *,
    pattern: str | None = None,
    from_beginning: bool = False,
    idle_timeout_s: float | None = None,
    codec: AvroCodec | None = None,
) -> AsyncGenerator[ReadRecord, None]:
    """Yield the records of the entity topics as they arrive, decoded, filtered by event-type glob.

    Starts at the current end of each partition (or at its beginning); ends
    after ``idle_timeout_s`` without a matching record, else runs until cancelled.
    ``UnknownTopicError`` for a name that is not a catalog topic or a topic the
    broker does not have (checked before anything could create it).
    Example: ``async with aclosing(tail_records(conn, ["session"])) as records: ...``
    """
    codec = codec or codec_for(connection)
    timeout = connection.request_timeout_s
    async with _assigned(connection, entities) as (consumer, partitions):
        if from_beginning:
            await asyncio.wait_for(consumer.seek_to_beginning(*partitions), timeout=timeout)
        else:
            for tp, highwater in (await _high_watermarks(consumer, partitions, timeout)).items():
                consumer.seek(tp, highwater)
        last_seen = time.monotonic()
        while True:
            wait_ms = _POLL_MS
            if idle_timeout_s is not None:
                remaining = idle_timeout_s - (time.monotonic() - last_seen)
                if remaining <= 0:
                    return
                wait_ms = max(1, min(_POLL_MS, int(remaining * 1000)))
            batch = await _getmany(consumer, partitions, wait_ms, timeout)
            for tp in sorted(batch):
                for raw in batch[tp]:
                    if _skip_by_header(raw, pattern):
                        continue
                    record = _decode(codec, raw)
                    if record.matches(pattern):
                        last_seen = time.monotonic()
                        yield record


@dataclass
class _Window:
    """What ``read_history`` knows of one partition: records [start, highwater) were read."""

    low: int
    start: int
    highwater: int
    matched: list[ReadRecord] = field(default_factory=list)
    done: bool = False


async def _read_ranges(
    consumer: AIOKafkaConsumer,
    ranges: dict[TopicPartition, tuple[int, int]],
    assigned: list[TopicPartition],
    timeout_s: float,
) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
    """The records with offsets in [start, end) of each partition; other partitions are paused meanwhile."""
    pending = dict(ranges)
    out: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {tp: [] for tp in ranges}
    consumer.pause(*[tp for tp in assigned if tp not in ranges])
    consumer.resume(*ranges)
    for tp, (start, _) in ranges.items():
        consumer.seek(tp, start)
    last_progress = time.monotonic()
    while pending:
        batch = await _getmany(consumer, list(pending), _FETCH_WAIT_MS, timeout_s)
        for tp, records in batch.items():
            if tp in pending:
                start, end = pending[tp]
                out[tp] += [record for record in records if start <= record.offset < end]
                last_progress = time.monotonic()
        for tp in list(pending):
            position = await asyncio.wait_for(consumer.position(tp), timeout=timeout_s)
            if position >= pending[tp][1]:
                del pending[tp]
                consumer.pause(tp)
        if pending and time.monotonic() - last_progress > timeout_s:
            tp = next(iter(pending))
            raise BrokerError(f"reading {tp.topic}/{tp.partition} made no progress within {timeout_s:g} s")
    return out


async def read_history(
    connection: KafkaConnection,
    count: int,
    *,
    pattern: str | None = None,
    entities: Sequence[str] | None = None,
    codec: AvroCodec | None = None,
) -> list[ReadRecord]:
    """The last ``count`` records matching ``pattern`` across the entity topics, newest last.

    Each partition is read backwards from its high watermark in growing
    windows (``count`` records, then twice as many, ...) until it holds
    ``count`` matches or its start is reached; the matches are merged by
    ``ReadRecord.order`` (when the events happened). Like the original system's
    ``getEventHistory(n)`` with its type filter.
    Example: ``await read_history(conn, 50, pattern="payment:*")``
    """
    if count <= 0:
        return []
    codec = codec or codec_for(connection)
    timeout = connection.request_timeout_s
    async with _assigned(connection, entities) as (consumer, partitions):
        lows = await asyncio.wait_for(consumer.beginning_offsets(partitions), timeout=timeout)
        highs = await _high_watermarks(consumer, partitions, timeout)
        windows = {tp: _Window(lows[tp], highs[tp], highs[tp], done=highs[tp] <= lows[tp]) for tp in partitions}
        size = count
        while active := {tp: w for tp, w in windows.items() if not w.done}:
            ranges = {tp: (max(w.low, w.start - size), w.start) for tp, w in active.items()}
            read = await _read_ranges(consumer, ranges, partitions, timeout)
            for tp, window in active.items():
                decoded = [_decode(codec, raw) for raw in read[tp] if not _skip_by_header(raw, pattern)]
                window.matched[:0] = [record for record in decoded if record.matches(pattern)]
                window.start = ranges[tp][0]
                window.done = len(window.matched) >= count or window.start <= window.low
            size *= 2
    merged = [record for window in windows.values() for record in window.matched]
    merged.sort(key=lambda r: r.order)
    return merged[-count:]


async def partition_ends(
    connection: KafkaConnection, entities: Sequence[str] | None = None, *, topics: Sequence[str] | None = None
) -> dict[TopicPartition, tuple[int, int]]:
    """(first offset, high watermark) of every partition of the entity topics (or of ``topics``, full names of
    existing topics such as retry tiers), from a fetch."""
    timeout = connection.request_timeout_s
    async with _assigned(connection, entities, topics) as (consumer, partitions):
        lows = await asyncio.wait_for(consumer.beginning_offsets(partitions), timeout=timeout)
        highs = await _high_watermarks(consumer, partitions, timeout)
    return {tp: (int(lows[tp]), highs[tp]) for tp in partitions}


async def _read_raw(
    connection: KafkaConnection, entities: Sequence[str] | None, topics: Sequence[str] | None = None
) -> AsyncGenerator[ConsumerRecord[bytes, bytes], None]:
    """Raw records from the beginning to the end seen at the start, one partition at a time."""
    timeout = connection.request_timeout_s
    async with _assigned(connection, entities, topics) as (consumer, partitions):
        lows = await asyncio.wait_for(consumer.beginning_offsets(partitions), timeout=timeout)
        ends = await _high_watermarks(consumer, partitions, timeout)
        for tp in partitions:
            if ends[tp] <= lows[tp]:
                continue
            consumer.pause(*[other for other in partitions if other != tp])
            consumer.resume(tp)
            consumer.seek(tp, lows[tp])
            position = lows[tp]
            last_progress = time.monotonic()
            while position < ends[tp]:
                batch = await _getmany(consumer, [tp], _FETCH_WAIT_MS, timeout)
                for raw in batch.get(tp, []):
                    if raw.offset < ends[tp]:
                        yield raw
                    position = raw.offset + 1
                    last_progress = time.monotonic()
                if time.monotonic() - last_progress > timeout:
                    raise BrokerError(f"reading {tp.topic}/{tp.partition} made no progress within {timeout:g} s")


async def read_all(
    connection: KafkaConnection, entities: Sequence[str] | None = None, *, codec: AvroCodec | None = None
) -> AsyncGenerator[ReadRecord, None]:
    """Every record of the entity topics, from the beginning up to the end seen when reading started.

    Streams partition by partition (memory stays flat). Example: ``async for r in read_all(conn, ["system"])``
    """
    codec = codec or codec_for(connection)
    async for raw in _read_raw(connection, entities):
        yield _decode(codec, raw)


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record of any topic, undecoded. Example: ``json.loads(record.value) if record.value else None``"""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None = field(repr=False)


async def read_raw(connection: KafkaConnection, topics: Sequence[str]) -> AsyncGenerator[RawRecord, None]:
    """Every record of ``topics`` (full names, which must exist) up to the end seen when reading started.

    For topics that hold no catalog events, such as the replay log of dead letters.
    Example: ``async for r in read_raw(conn, [conn.topic("system-replays")])``
    """
    async for raw in _read_raw(connection, None, topics):
        yield RawRecord(raw.topic, raw.partition, raw.offset, raw.timestamp, raw.key, raw.value)


async def count_event_types(connection: KafkaConnection, entities: Sequence[str] | None = None) -> Counter[str]:
    """Records per ``event-type`` header across the entity topics (no decoding; ``?`` when absent)."""
    counts: Counter[str] = Counter()
    async for raw in _read_raw(connection, entities):
        counts[_header_type(raw) or "?"] += 1
    return counts
