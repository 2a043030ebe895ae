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
from collections.abc import Mapping
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from consumers.testing import InMemoryBroker, StoredRecord
from producers import KafkaConnection, convert_kafka_error
from schemas import CATALOG, AvroCodec
from schemas.errors import DecodeError

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

__all__ = ["Feed", "KafkaFeed", "MemoryFeed", "Position", "catalog_topics", "matches"]

Position = tuple[str, int]
"""(topic, partition)."""

_LIVE_WAIT_MS = 100
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
        self, until: Mapping[Position, int], *, count: int | None, since_ms: int | None, pattern: str
    ) -> list[ReadRecord]:
        """Matching records below ``until``: the last ``count``, or those stored at or after ``since_ms``."""

    async def ends(self) -> dict[Position, int]:
        """Every partition's current end offset."""


class KafkaFeed:
    """A group-less consumer over every partition of the catalog's topics (read_committed)."""

    def __init__(self, connection: KafkaConnection, codec: AvroCodec) -> None:
        self._connection = connection
        self._codec = codec
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._stack = contextlib.AsyncExitStack()
        self.positions: dict[Position, int] = {}

    async def start(self) -> None:
        """Assign every partition and seek to its high watermark (from a fetch: Tansu's ListOffsets is wrong)."""
        consumer, partitions = await self._stack.enter_async_context(_assigned(self._connection, None))
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
        self, until: Mapping[Position, int], *, count: int | None, since_ms: int | None, pattern: str
    ) -> list[ReadRecord]:
        """History below ``until``: ``read_history`` for a count, ``offsets_for_times`` then a range read for a time."""
        if count is not None:
            # records stored after ``until`` are read too, then dropped: ask for that many more
            slack = _slack(until, await self.ends())
            records = await read_history(self._connection, count + slack, pattern=pattern)
            kept = [r for r in records if r.offset < until.get((r.topic, r.partition), 0)]
            return kept[-count:]
        assert since_ms is not None  # noqa: S101 - one of the two is given
        async with _assigned(self._connection, None) as (consumer, partitions):
            timeout = self._connection.request_timeout_s
            try:
                found = await asyncio.wait_for(
                    consumer.offsets_for_times(dict.fromkeys(partitions, since_ms)), timeout=timeout
                )
            except (KafkaError, TimeoutError) as exc:
                raise convert_kafka_error(exc, "finding offsets by time") from exc
            ranges = {}
            for tp in partitions:
                end = until.get((tp.topic, tp.partition), 0)
                start = found[tp].offset if found.get(tp) is not None else end
                if start < end:
                    ranges[tp] = (start, end)
            read = await _read_ranges(consumer, ranges, partitions, timeout) if ranges else {}
        records = [_decode(self._codec, raw) for tp in sorted(read) for raw in read[tp]]
        # a broker may answer a time with an earlier offset (a batch's first): the timestamps decide
        records = [r for r in records if r.matches(pattern) and r.timestamp_ms >= since_ms]
        records.sort(key=lambda r: r.order)
        return records

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
        self, until: Mapping[Position, int], *, count: int | None, since_ms: int | None, pattern: str
    ) -> list[ReadRecord]:
        """Matching records below ``until`` (the last ``count``, or those stored at or after ``since_ms``)."""
        records = [
            self._read(tp, stored)
            for tp, log in self._logs()
            for stored in log[: until.get(tp, 0)]
            if self._broker.readable(stored) and (since_ms is None or stored.timestamp_ms >= since_ms)
        ]
        records = [r for r in records if r.matches(pattern)]
        records.sort(key=lambda r: r.order)
        return records[-count:] if count is not None else records

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


def catalog_topics(connection: KafkaConnection) -> dict[str, str]:
    """Entity -> full topic name of every catalog topic."""
    return {entity: connection.topic(entity) for entity in CATALOG.topics}


def matches(pattern: str, event_type: str | None) -> bool:
    """Whether an event type matches a subscription pattern (``session:*``, ``*``, or a type)."""
    return event_type is not None and fnmatch.fnmatchcase(event_type, pattern)
