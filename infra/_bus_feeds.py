"""Where the ``EventBus`` facade reads events from: every entity topic, without a consumer group.

``KafkaFeed`` assigns every partition of the catalog topics to one group-less consumer (nothing
is committed, no group is disturbed); ``MemoryFeed`` reads an ``InMemoryBroker``. Both start at
the current end of each partition, know the next offset they will deliver per partition
(``positions``), and read back what came before (``history``, ``since``) up to a given position,
so a subscription's catch-up and its live events neither overlap nor leave a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import heapq
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from consumers.testing import InMemoryBroker, StoredRecord
from producers import KafkaConnection, convert_kafka_error
from schemas import CATALOG, AvroCodec
from schemas.errors import DecodeError

from ._bus_cursor import CursorExpiredError, InvalidCursorError
from ._reader import (
    ReadRecord,
    _assigned,
    _decode,
    _getmany,
    _high_watermarks,
    _read_ranges,
    partition_ends,
    read_history,
)

__all__ = ["Feed", "KafkaFeed", "MemoryFeed", "Position", "catalog_topics", "in_time_order", "matches"]

Position = tuple[str, int]
"""(topic, partition)."""

_LIVE_WAIT_MS = 100
LIVE_FETCH_WAIT_MS = 10
"""How long the broker may hold the live feed's fetch (``ConsumerConfig.fetch_max_wait_ms``'s default).

Tansu answers a held fetch only when the wait is over, not when records arrive: every live event waits for it."""
_MEMORY_POLL_S = 0.005


class Feed(Protocol):
    """The live records of every entity topic, and what came before them."""

    positions: dict[Position, int]
    """Per partition, the offset of the next record ``next_batch`` delivers."""

    async def start(self) -> None:
        """Begin at the current end of every partition."""

    def now(self) -> dict[Position, int]:
        """Per partition, the end as far as known without asking the broker (at least ``positions``)."""

    async def close(self) -> None:
        """Release the consumer."""

    async def next_batch(self) -> list[ReadRecord]:
        """The records after ``positions`` (waiting briefly when there are none); advances ``positions``."""

    async def before(
        self,
        until: Mapping[Position, int],
        *,
        patterns: Sequence[str],
        count: int | None = None,
        since_ms: int | None = None,
        after: Mapping[Position, int] | None = None,
    ) -> list[ReadRecord]:
        """Records below ``until`` in time order (each partition in offset order): the last ``count`` matching
        ``patterns``, those stored at or after ``since_ms`` (matching), or every record from ``after`` on
        (all of them: the caller advances its cursor past the ones it does not deliver)."""

    async def check_held(self, positions: Mapping[Position, int]) -> None:
        """``CursorExpiredError`` when a position is below what its partition still holds; ``InvalidCursorError``
        for a partition that is not one of the entity topics'."""

    async def ends(self) -> dict[Position, int]:
        """Every partition's current end offset."""


class KafkaFeed:
    """A group-less consumer over every partition of the catalog's topics (read_committed)."""

    def __init__(
        self, connection: KafkaConnection, codec: AvroCodec, *, fetch_max_wait_ms: int = LIVE_FETCH_WAIT_MS
    ) -> None:
        self._connection = connection
        self._codec = codec
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._stack = contextlib.AsyncExitStack()
        self.positions: dict[Position, int] = {}

    async def start(self) -> None:
        """Assign every partition and seek to its high watermark (from a fetch: Tansu's ListOffsets is wrong)."""
        live = _assigned(self._connection, None, fetch_max_wait_ms=self._fetch_max_wait_ms)
        consumer, partitions = await self._stack.enter_async_context(live)
        self._consumer, self._partitions = consumer, partitions
        try:
            ends = await _high_watermarks(consumer, partitions, self._connection.request_timeout_s)
        except BaseException:
            await self.close()
            raise
        for tp, end in ends.items():
            consumer.seek(tp, end)
            self.positions[(tp.topic, tp.partition)] = end

    def now(self) -> dict[Position, int]:
        """``positions``, moved up to the high watermark the last fetch reported."""
        ends = dict(self.positions)
        if self._consumer is not None:
            for tp in self._partitions:
                high = self._consumer.highwater(tp)
                if high is not None and high > ends.get((tp.topic, tp.partition), 0):
                    ends[(tp.topic, tp.partition)] = int(high)
        return ends

    async def close(self) -> None:
        """Stop the consumer."""
        self._consumer = None
        await self._stack.aclose()

    async def next_batch(self) -> list[ReadRecord]:
        """One fetch of every partition, decoded, in partition order."""
        if self._consumer is None:
            return []
        timeout = self._connection.request_timeout_s
        try:
            batch = await _getmany(self._consumer, self._partitions, _LIVE_WAIT_MS, timeout)
        except (KafkaError, TimeoutError) as exc:
            raise convert_kafka_error(exc, "reading the entity topics") from exc
        out: list[ReadRecord] = []
        for tp in sorted(batch):
            for raw in batch[tp]:
                out.append(_decode(self._codec, raw))
                self.positions[(tp.topic, tp.partition)] = raw.offset + 1
        return out

    async def before(
        self,
        until: Mapping[Position, int],
        *,
        patterns: Sequence[str],
        count: int | None = None,
        since_ms: int | None = None,
        after: Mapping[Position, int] | None = None,
    ) -> list[ReadRecord]:
        """History below ``until``: ``read_history`` for a count, range reads for a time or a cursor."""
        if count is not None:
            (pattern,) = patterns
            # records stored after ``until`` are read too, then dropped: ask for that many more
            slack = _slack(until, await self.ends())
            records = await read_history(self._connection, count + slack, pattern=pattern)
            kept = [r for r in records if r.offset < until.get((r.topic, r.partition), 0)]
            return kept[-count:]
        async with _assigned(self._connection, None) as (consumer, partitions):
            timeout = self._connection.request_timeout_s
            if after is not None:
                starts = {tp: after.get((tp.topic, tp.partition), 0) for tp in partitions}
            else:
                try:
                    found = await asyncio.wait_for(
                        consumer.offsets_for_times(dict.fromkeys(partitions, since_ms)), timeout=timeout
                    )
                except (KafkaError, TimeoutError) as exc:
                    raise convert_kafka_error(exc, "finding offsets by time") from exc
                starts = {tp: found[tp].offset for tp in partitions if found.get(tp) is not None}
            ranges = {}
            for tp in partitions:
                end = until.get((tp.topic, tp.partition), 0)
                start = starts.get(tp, end)
                if start < end:
                    ranges[tp] = (start, end)
            read = await _read_ranges(consumer, ranges, partitions, timeout) if ranges else {}
        records = [_decode(self._codec, raw) for tp in sorted(read) for raw in read[tp]]
        if after is None:
            # a broker may answer a time with an earlier offset (a batch's first): the timestamps decide
            records = [r for r in records if _matches_any(patterns, r) and r.timestamp_ms >= (since_ms or 0)]
        return in_time_order(records)

    async def check_held(self, positions: Mapping[Position, int]) -> None:
        """Compare with each partition's first offset still held (``partition_ends``)."""
        held = await partition_ends(self._connection)
        known = {(tp.topic, tp.partition): low for tp, (low, _) in held.items()}
        _check_positions(positions, known)

    async def ends(self) -> dict[Position, int]:
        """High watermarks of every partition."""
        return {(tp.topic, tp.partition): high for tp, (_, high) in (await partition_ends(self._connection)).items()}


def _slack(until: Mapping[Position, int], ends: Mapping[Position, int]) -> int:
    """How many records were stored after ``until``."""
    return sum(max(0, end - until.get(tp, 0)) for tp, end in ends.items())


class MemoryFeed:
    """The same over an ``InMemoryBroker`` (its read_committed view)."""

    def __init__(self, broker: InMemoryBroker, codec: AvroCodec, topics: Mapping[str, str]) -> None:
        self._broker = broker
        self._codec = codec
        self._topics = dict(topics)  # entity -> topic name
        self.positions: dict[Position, int] = {}

    def _logs(self) -> list[tuple[Position, list[StoredRecord]]]:
        out = []
        for topic in self._topics.values():
            for partition, log in enumerate(self._broker.topics.get(topic, [])):
                out.append(((topic, partition), log))
        return out

    async def start(self) -> None:
        """Begin at the end of every partition."""
        for tp, log in self._logs():
            self.positions[tp] = self._broker.stable_end(log)

    def now(self) -> dict[Position, int]:
        """The stable end of every partition (exact: the broker is in this process)."""
        return {tp: self._broker.stable_end(log) for tp, log in self._logs()}

    async def close(self) -> None:
        """Nothing to release."""

    def _read(self, tp: Position, stored: StoredRecord) -> ReadRecord:
        return _decode_stored(self._codec, tp, stored)

    async def next_batch(self) -> list[ReadRecord]:
        """The visible records after ``positions``; polls briefly when there are none."""
        out: list[ReadRecord] = []
        for tp, log in self._logs():
            start = self.positions.get(tp, 0)
            for stored in self._broker.visible(log, start, len(log) - start):
                self.positions[tp] = stored.offset + 1
                if self._broker.readable(stored):
                    out.append(self._read(tp, stored))
        if not out:
            await asyncio.sleep(_MEMORY_POLL_S)
        return out

    async def before(
        self,
        until: Mapping[Position, int],
        *,
        patterns: Sequence[str],
        count: int | None = None,
        since_ms: int | None = None,
        after: Mapping[Position, int] | None = None,
    ) -> list[ReadRecord]:
        """Records below ``until``, as ``Feed.before`` says (the fake keeps every record: none ever expires)."""
        records = [
            self._read(tp, stored)
            for tp, log in self._logs()
            for stored in log[(after or {}).get(tp, 0) : until.get(tp, 0)]
            if self._broker.readable(stored) and (since_ms is None or stored.timestamp_ms >= since_ms)
        ]
        if after is None:
            records = [r for r in records if _matches_any(patterns, r)]
        records = in_time_order(records)
        return records[-count:] if count is not None else records

    async def check_held(self, positions: Mapping[Position, int]) -> None:
        """Every partition holds everything from offset 0."""
        _check_positions(positions, {tp: 0 for tp, _ in self._logs()})

    async def ends(self) -> dict[Position, int]:
        """The stable end of every partition."""
        return {tp: self._broker.stable_end(log) for tp, log in self._logs()}


def _decode_stored(codec: AvroCodec, tp: Position, stored: StoredRecord) -> ReadRecord:
    place = (tp[0], tp[1], stored.offset, stored.timestamp_ms, stored.key, tuple(stored.headers), stored.value)
    try:
        event = codec.decode(stored.value)
    except DecodeError as exc:  # kept on the record, never raised
        return ReadRecord(*place, error=exc)
    return ReadRecord(*place, event=event)


def in_time_order(records: Iterable[ReadRecord]) -> list[ReadRecord]:
    """Records merged by when they happened (``ReadRecord.order``), each partition's kept in offset order.

    A cursor moves forward per partition, so a partition's records must never be delivered out of order.
    """
    by_partition: dict[Position, list[ReadRecord]] = {}
    for record in records:
        by_partition.setdefault((record.topic, record.partition), []).append(record)
    runs = [sorted(run, key=lambda r: r.offset) for run in by_partition.values()]
    return list(heapq.merge(*runs, key=lambda r: r.order))


def _matches_any(patterns: Sequence[str], record: ReadRecord) -> bool:
    return any(matches(pattern, record.event_type) for pattern in patterns)


def _check_positions(positions: Mapping[Position, int], first_held: Mapping[Position, int]) -> None:
    for tp, offset in positions.items():
        if tp not in first_held:
            raise InvalidCursorError(f"the resume token names {tp[0]}/{tp[1]}, which is not an entity topic here")
        if offset < first_held[tp]:
            msg = f"{tp[0]}/{tp[1]} no longer holds offset {offset} (it starts at {first_held[tp]}): start again"
            raise CursorExpiredError(msg)


def catalog_topics(connection: KafkaConnection) -> dict[str, str]:
    """Entity -> full topic name of every catalog topic."""
    return {entity: connection.topic(entity) for entity in CATALOG.topics}


def matches(pattern: str, event_type: str | None) -> bool:
    """Whether an event type matches a subscription pattern (``session:*``, ``*``, or a type)."""
    return event_type is not None and fnmatch.fnmatchcase(event_type, pattern)
