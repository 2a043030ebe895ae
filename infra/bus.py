"""``EventBus``: the original in-process bus's API over Kafka, for services migrating from it.

The original was used as ``EventBus.getInstance().publish(type, data)`` and ``subscribe(type,
handler)`` returning an unsubscribe function, plus ``getStats()`` and ``getEventHistory(n)``.
Here the same calls publish to the entity topics (validated, Avro, keyed by entity id) and read
them back live through one group-less consumer shared by every subscription. Subscriptions are
for UI-like and test uses: they see events while the bus runs, nothing is committed. Work that
must happen once per event belongs in a consumer group (``eventbus run``).

Example::

    from infra.bus import EventBus

    async with EventBus.connect(load_settings()) as bus:
        unsubscribe = bus.subscribe("session:*", lambda event: print(event.event_type))
        result = await bus.publish("session:created", {"session_id": "s-1", ...})
        unsubscribe()
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import Any, Self

from consumers import ConsumerGroup, group_id
from consumers.testing import InMemoryBroker
from producers import EventPublisher, KafkaConnection, PublisherConfig, PublishResult
from schemas import CATALOG, AvroCodec, Event
from schemas.errors import ConfigurationError, EventBusError

from ._bus_cursor import CursorExpiredError, InvalidCursorError, SlowConsumerError, decode_cursor, encode_cursor
from ._bus_feeds import Feed, KafkaFeed, MemoryFeed, Position, catalog_topics, matches
from ._reader import ReadRecord
from ._settings import Settings
from ._stats import BusStats, GroupLag, PartitionLag, collect_stats

__all__ = [
    "CursorExpiredError",
    "Delivered",
    "EventBus",
    "Handler",
    "InvalidCursorError",
    "SlowConsumerError",
    "Unsubscribe",
]

log = logging.getLogger("eventbus.bus")

Handler = Callable[[Event], Awaitable[object] | object]
"""``handler(event)``, sync or async; what it returns is ignored."""
Unsubscribe = Callable[[], None]
"""Stops a subscription; calling it again does nothing."""


About = tuple[tuple[str, str], ...]
"""(field, value) pairs: the events whose ``field`` is ``value`` for one of the pairs."""


@dataclass(eq=False)
class _Subscription:
    patterns: tuple[str, ...]
    deliver: Callable[[ReadRecord, Event], Awaitable[None]]
    start: dict[Position, int]
    """Live records below these offsets are not this subscription's (before it began, or its catch-up's).
    Never changed (subscriptions made at the same position share it)."""
    where: Callable[[Event], bool] | None = None
    cursor: dict[Position, int] | None = None
    """For streams: the next offset per partition once the last delivered record is behind (the resume token).
    It moves while the subscription catches up; once live, the records the feed takes move it (read it with
    ``EventBus._cursor_of``) and it is never changed (it may be ``start`` itself)."""
    active: bool = True
    catching_up: bool = False
    held: list[ReadRecord] = field(default_factory=list)
    """Live records that arrived while the catch-up was read, delivered after it."""
    about: About | None = None
    """Only events about these (field, value) pairs; None: any event."""
    live_from: dict[Position, int] | None = None
    """For a tracked subscription that caught up: ``EventBus._progress`` when it went live."""
    seq: int = 0
    """Creation order (``_Router`` delivers a record to its subscriptions in this order)."""

    def wants(self, record: ReadRecord) -> bool:
        """Whether the record is this subscription's: its type matches, it is ``about`` one of the pairs, and
        ``where`` accepts the event."""
        event = record.event
        if event is None or not any(matches(pattern, event.event_type) for pattern in self.patterns):
            return False
        if self.about is not None and not any(getattr(event, name, None) == value for name, value in self.about):
            return False
        return self.where is None or self.where(event)

    @property
    def name(self) -> str:
        return ",".join(self.patterns)


class _Router:
    """The subscriptions, found per record by what its event carries instead of each being tested per record.

    A record's candidates are the subscriptions without ``about`` whose patterns match its type (cached per
    type), plus those ``about`` a (field, value) the event carries. Candidates are still tested in full
    (``_Subscription.wants``): the index only skips subscriptions that could not want the record.
    """

    def __init__(self) -> None:
        self.all: dict[int, _Subscription] = {}
        """Every live subscription, in creation order."""
        self.catching: dict[int, _Subscription] = {}
        """Those reading what came before (they hold every live record meanwhile)."""
        self._open: dict[int, _Subscription] = {}
        self._open_by_type: dict[str, list[_Subscription]] = {}
        self._about: dict[tuple[str, str], dict[int, _Subscription]] = {}
        self._fields: dict[str, int] = {}
        self._next = 0

    def add(self, subscription: _Subscription) -> None:
        subscription.seq = self._next
        self._next += 1
        seq = subscription.seq
        self.all[seq] = subscription
        if subscription.catching_up:
            self.catching[seq] = subscription
        if subscription.about is None:
            self._open[seq] = subscription
            self._open_by_type.clear()
            return
        for pair in subscription.about:
            self._about.setdefault(pair, {})[seq] = subscription
            self._fields[pair[0]] = self._fields.get(pair[0], 0) + 1

    def remove(self, subscription: _Subscription) -> None:
        seq = subscription.seq
        if self.all.get(seq) is not subscription:  # removed already
            return
        del self.all[seq]
        self.catching.pop(seq, None)
        if subscription.about is None:
            del self._open[seq]
            self._open_by_type.clear()
            return
        for pair in subscription.about:
            bucket = self._about[pair]
            del bucket[seq]
            if not bucket:
                del self._about[pair]
            left = self._fields[pair[0]] - 1
            if left:
                self._fields[pair[0]] = left
            else:
                del self._fields[pair[0]]

    def _open_for(self, event_type: str) -> list[_Subscription]:
        found = self._open_by_type.get(event_type)
        if found is None:
            found = [s for s in self._open.values() if any(matches(p, event_type) for p in s.patterns)]
            self._open_by_type[event_type] = found
        return found

    def candidates(self, event: Event | None) -> list[_Subscription]:
        """The subscriptions that may want ``event`` (none for an undecodable record), in creation order."""
        if event is None:
            return []
        found = self._open_for(event.event_type)
        if not self._fields:
            return found
        about: list[_Subscription] = []
        for name in self._fields:
            value = getattr(event, name, None)
            if isinstance(value, str) and (bucket := self._about.get((name, value))):
                about.extend(bucket.values())
        if not about:
            return found
        if not found and len(about) == 1:
            return about
        return sorted({s.seq: s for s in (*found, *about)}.values(), key=lambda s: s.seq)


class _Inbox:
    """A stream's undelivered events (None after the last: it overflowed) and its reader's wait for one.

    ``asyncio.Queue`` for one reader, without its four deques (~3 KB per stream, most of them idle).
    """

    __slots__ = ("items", "overflow", "waiter")

    def __init__(self) -> None:
        self.items: deque[Delivered | None] | None = None
        self.overflow = False
        self.waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self.items) if self.items is not None else 0

    def put(self, item: Delivered | None) -> None:
        if self.items is None:
            self.items = deque()
        self.items.append(item)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def get(self) -> Delivered | None:
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.items.popleft()


@dataclass(frozen=True, slots=True)
class Delivered:
    """An event a stream delivers, where it is stored, and the token that resumes right after it.

    Example: ``async for item in events: send(id=item.cursor, data=item.event.model_dump_json())``
    """

    event: Event
    topic: str
    partition: int
    offset: int
    cursor: str


class EventBus:
    """Publish by type and data, subscribe by type or pattern, stats and history, as the original EventBus did.

    Open it with ``EventBus.connect(settings)`` (Kafka) or ``EventBus.in_memory()`` (the in-memory fake, same
    API, for services' unit tests), then ``async with``. Example: ``await bus.publish("coach:status_changed",
    {"coach_id": "c-1", "old_status": "online", "new_status": "busy"})``
    """

    def __init__(
        self,
        *,
        publisher: EventPublisher,
        feed: Feed,
        stats: Callable[[int], Awaitable[BusStats]],
        codec: AvroCodec,
    ) -> None:
        self._publisher = publisher
        self._feed = feed
        self._stats = stats
        self._codec = codec
        self._router = _Router()
        self._progress: dict[Position, int] = {}
        """Per partition, the offset after the last record the dispatch loop took (moves every live cursor)."""
        self._start: dict[Position, int] = {}
        """The last subscription's start, shared by the next ones made at the same position."""
        self._published: dict[Position, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._catch_ups: set[asyncio.Task[None]] = set()
        self._running = False

    # -- opening -----------------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        settings: Settings | None = None,
        *,
        service: str | None = None,
        groups: Sequence[ConsumerGroup] = (),
    ) -> EventBus:
        """A bus on the Kafka cluster of ``settings`` (the environment's by default); open it with ``async with``.

        ``service`` names the publishing service in every event's metadata; ``groups`` are the consumer
        groups whose lag ``stats()`` reports.
        """
        settings = settings or Settings()
        connection = settings.connection()
        codec = settings.codec(service)
        publisher = EventPublisher(connection=connection, config=settings.publisher_config(service), codec=codec)

        async def stats(subscriptions: int) -> BusStats:
            found = await collect_stats(connection, groups)
            found.subscription_count = subscriptions
            return found

        feed = KafkaFeed(connection, codec, fetch_max_wait_ms=settings.consumer_config().fetch_max_wait_ms)
        return cls(publisher=publisher, feed=feed, stats=stats, codec=codec)

    @classmethod
    def in_memory(
        cls,
        broker: InMemoryBroker | None = None,
        *,
        service: str = "eventbus",
        groups: Sequence[ConsumerGroup] = (),
        partitions: int = 3,
    ) -> EventBus:
        """A bus on an ``InMemoryBroker`` (a new one with every catalog topic, by default): no Kafka needed.

        Consumer groups can run on the same broker (``consumers.testing.InMemoryConsumerTransport``).
        Example: ``async with EventBus.in_memory() as bus: ...``
        """
        broker = broker or InMemoryBroker()
        connection = KafkaConnection()
        topics = catalog_topics(connection)
        for topic in topics.values():
            broker.create_topic(topic, partitions)
        codec = AvroCodec()
        config = PublisherConfig(service=service, enable_idempotence=False)
        publisher = EventPublisher(connection=connection, config=config, transport=broker.producer(), codec=codec)

        async def stats(subscriptions: int) -> BusStats:
            return _memory_stats(broker, connection, groups, subscriptions)

        return cls(publisher=publisher, feed=MemoryFeed(broker, codec, topics), stats=stats, codec=codec)

    async def __aenter__(self) -> Self:
        await self._publisher.__aenter__()
        try:
            await self._feed.start()
        except BaseException:
            await self._publisher.__aexit__(None, None, None)
            raise
        self._running = True
        self._task = asyncio.create_task(self._dispatch(), name="eventbus:subscriptions")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._running = False
        for task in [*self._catch_ups, *([self._task] if self._task else [])]:
            task.cancel()
        for task in [*self._catch_ups, *([self._task] if self._task else [])]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self._feed.close()
        finally:
            await self._publisher.__aexit__(exc_type, exc, tb)

    # -- publishing --------------------------------------------------------------------------------

    async def publish(self, event: str | Event, data: Mapping[str, Any] | None = None) -> PublishResult:
        """Publish ``event`` (a type and its data, as the original did, or a typed event) and wait for the ack.

        The data is validated by the catalog (``EventValidationError`` names the field); metadata (event id,
        time, service, correlation) is filled in. Returns the topic, partition, offset and event id.
        """
        if isinstance(event, str):
            event = CATALOG.parse(event, data or {})
        elif data is not None:
            raise ConfigurationError("publish(event, data): give data only with an event type, not with an event")
        result = await self._publisher.publish(event)
        tp = (result.topic, result.partition)
        self._published[tp] = max(self._published.get(tp, 0), result.offset + 1)
        return result

    # -- subscribing -------------------------------------------------------------------------------

    def subscribe(self, pattern: str, handler: Handler, *, since: datetime | int | None = None) -> Unsubscribe:
        """Call ``handler(event)`` for every event whose type matches ``pattern`` (``session:created``,
        ``session:*``, ``*``), from now on; returns the function that stops it. "Now" is after every event this bus
        published and every event its consumer has seen stored; an event another process is publishing at
        this very moment may fall on either side.

        ``since`` first delivers what came before, in order: the last N matching events (an int) or those
        stored since a time (a datetime); live events wait behind that catch-up, none twice. A handler that
        raises is logged with the event and the pattern, and the other subscriptions go on.
        """

        async def call(record: ReadRecord, event: Event) -> None:
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception(
                    "subscription %r: handler failed on %s %s (%s/%s@%s); the other subscriptions go on",
                    pattern,
                    event.event_type,
                    event.event_id,
                    record.topic,
                    record.partition,
                    record.offset,
                )

        subscription = self._add((pattern,), call, catch_up=since)
        return partial(self._remove, subscription)

    def _add(
        self,
        patterns: Sequence[str],
        deliver: Callable[[ReadRecord, Event], Awaitable[None]],
        *,
        catch_up: datetime | int | Mapping[Position, int] | None,
        where: Callable[[Event], bool] | None = None,
        about: Collection[tuple[str, str]] | None = None,
        track: bool = False,
    ) -> _Subscription:
        if not self._running:
            raise ConfigurationError("subscribe: open the bus first (async with EventBus.connect(...) as bus)")
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern:
                raise ConfigurationError("subscribe: a pattern is an event type or a glob such as 'session:*'")
            if not CATALOG.matching(pattern):
                raise ConfigurationError(f"subscribe: {pattern!r} matches no event type of the catalog")
        start = self._feed.now()
        for tp, end in self._published.items():  # this bus's own publishes are before "now", fetched or not
            start[tp] = max(start.get(tp, 0), end)
        if start == self._start:
            start = self._start  # one dict for the many streams opened between two records
        else:
            self._start = start
        cursor = None
        if track and catch_up is None:
            cursor = start  # a live cursor is never changed (_cursor_of)
        elif track:
            cursor = {**start, **catch_up} if isinstance(catch_up, Mapping) else dict(start)
        subscription = _Subscription(
            tuple(patterns),
            deliver,
            start,
            where=where,
            cursor=cursor,
            catching_up=catch_up is not None,
            about=tuple(dict.fromkeys(about)) if about is not None else None,
        )
        self._router.add(subscription)
        if catch_up is not None:
            task = asyncio.get_running_loop().create_task(self._catch_up(subscription, catch_up))
            self._catch_ups.add(task)
            task.add_done_callback(self._catch_ups.discard)
        return subscription

    def _remove(self, subscription: _Subscription) -> None:
        subscription.active = False
        self._router.remove(subscription)

    @asynccontextmanager
    async def stream(
        self,
        patterns: Sequence[str],
        *,
        after: str | None = None,
        where: Callable[[Event], bool] | None = None,
        about: Collection[tuple[str, str]] | None = None,
        max_queue: int = 1_000,
    ) -> AsyncIterator[AsyncIterator[Delivered]]:
        """The events matching any of ``patterns`` (and ``where``), as an async iterator, from now or ``after``.

        ``about``: (field, value) pairs (``[("user_id", "u-1")]``): only events whose field has that value, for
        one of the pairs, are the stream's. Many streams of one field each cost the feed a lookup per event,
        where ``where`` alone is called per stream and event.

        Each ``Delivered`` carries a ``cursor``: passed back as ``after`` (for example from an SSE
        ``Last-Event-ID``), the stream resumes right after that event in every partition, none twice, none
        missed while the topics still hold them. ``InvalidCursorError`` for a token that is not ours,
        ``CursorExpiredError`` when retention removed records it points at. A reader more than
        ``max_queue`` events behind gets ``SlowConsumerError`` from the iterator: it never slows the others.
        Example: ``async with bus.stream(["session:*"]) as events: async for item in events: ...``
        """
        positions = decode_cursor(after) if after is not None else None
        if positions is not None:
            await self._feed.check_held(positions)
        inbox = _Inbox()

        async def deliver(record: ReadRecord, event: Event) -> None:
            if inbox.overflow:
                return
            if len(inbox) >= max_queue:
                inbox.overflow = True
                self._remove(subscription)
                inbox.put(None)
                return
            cursor = encode_cursor(self._cursor_of(subscription))
            inbox.put(Delivered(event, record.topic, record.partition, record.offset, cursor))

        subscription = self._add(patterns, deliver, catch_up=positions, where=where, about=about, track=True)

        async def iterate() -> AsyncIterator[Delivered]:
            while True:
                item = await inbox.get()
                if item is None:
                    raise SlowConsumerError(f"the reader fell more than {max_queue} events behind; stream closed")
                yield item

        try:
            yield iterate()
        finally:
            self._remove(subscription)

    @property
    def subscription_count(self) -> int:
        """Live subscriptions (the original ``getStats().subscriptionCount``)."""
        return len(self._router.all)

    async def _catch_up(self, subscription: _Subscription, since: datetime | int | Mapping[Position, int]) -> None:
        count = since if isinstance(since, int) else None
        since_ms = int(since.timestamp() * 1000) if isinstance(since, datetime) else None
        after = since if isinstance(since, Mapping) else None
        try:
            earlier = await self._feed.before(
                subscription.start, count=count, since_ms=since_ms, after=after, patterns=subscription.patterns
            )
        except EventBusError as exc:
            log.error("subscription %r: reading what came before failed: %s", subscription.name, exc)  # noqa: TRY400
            earlier = []
        for record in earlier:
            if not subscription.active:
                return
            await self._offer(subscription, record)
        while subscription.held and subscription.active:
            await self._offer(subscription, subscription.held.pop(0))
        if subscription.cursor is not None:
            subscription.live_from = dict(self._progress)
        subscription.catching_up = False
        self._router.catching.pop(subscription.seq, None)

    async def _dispatch(self) -> None:
        reported_at = 0.0
        while self._running:
            try:
                batch = await self._feed.next_batch()
            except EventBusError as exc:
                if time.monotonic() - reported_at > 5.0:  # a broker away: say so every few seconds, not every fetch
                    log.warning("subscriptions: reading the topics failed, retrying: %s", exc)
                    reported_at = time.monotonic()
                await asyncio.sleep(1.0)
                continue
            for record in batch:
                await self._route(record)

    async def _route(self, record: ReadRecord) -> None:
        """Offer ``record`` to the subscriptions that may want it, and hold it for those catching up.

        Every live subscription's cursor moves past the record (``_progress``, read by ``_cursor_of``) without
        visiting the subscriptions that cannot want it.
        """
        tp = (record.topic, record.partition)
        self._progress[tp] = record.offset + 1
        targets = self._router.candidates(record.event)
        if self._router.catching:
            catching = self._router.catching.values()
            targets = sorted({s.seq: s for s in (*targets, *catching)}.values(), key=lambda s: s.seq)
        for subscription in targets:
            if record.offset < subscription.start.get(tp, 0):
                continue
            if subscription.catching_up:
                subscription.held.append(record)
            else:
                await self._offer(subscription, record)

    def _cursor_of(self, subscription: _Subscription) -> dict[Position, int]:
        """A tracked subscription's cursor, including the records it was not offered.

        Catching up, it is what it was offered. Live, it has been offered every record the dispatch loop took
        since it went live (none of them below its start), so it is its cursor then, moved up to ``_progress``
        in the partitions where the loop took a record since (made live at its start, which is at least
        ``_progress`` then, it need not remember when).
        """
        cursor = subscription.cursor
        assert cursor is not None  # noqa: S101 - a tracked subscription
        if subscription.catching_up:
            return cursor
        merged = dict(cursor)
        since = subscription.live_from
        for tp, end in self._progress.items():
            if end > merged.get(tp, 0) and (since is None or end > since.get(tp, 0)):
                merged[tp] = end
        return merged

    async def _offer(self, subscription: _Subscription, record: ReadRecord) -> None:
        """Advance the subscription's cursor past ``record``; deliver it when it is the subscription's."""
        if not subscription.active:
            return
        if subscription.cursor is not None and subscription.catching_up:  # live: _progress moved it already
            tp = (record.topic, record.partition)
            subscription.cursor[tp] = max(subscription.cursor.get(tp, 0), record.offset + 1)
        if record.event is not None and subscription.wants(record):
            await subscription.deliver(record, record.event)

    async def settle(self, timeout_s: float = 10.0) -> None:
        """Wait until every event stored so far has been delivered to the subscriptions (tests, demos).

        Raises ``TimeoutError`` after ``timeout_s``. Example: ``await bus.publish(...); await bus.settle()``
        """
        ends = await self._feed.ends()
        deadline = time.monotonic() + timeout_s
        while any(self._feed.positions.get(tp, 0) < end for tp, end in ends.items()) or self._router.catching:
            if time.monotonic() > deadline:
                raise TimeoutError(f"subscriptions did not catch up within {timeout_s:g} s")
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # let the dispatch loop finish the batch it holds

    # -- stats and history -------------------------------------------------------------------------

    async def stats(self) -> BusStats:
        """The original ``getStats()``: total events, subscription count, events by type; plus lag per group.

        ``.as_dict()`` has the original's keys (``totalEvents``, ``subscriptionCount``, ``eventsByType``).
        """
        return await self._stats(self.subscription_count)

    async def history(self, limit: int = 50, *, type: str = "*") -> list[Event]:  # noqa: A002 - the original's name
        """The last ``limit`` events whose type matches ``type`` (``session:*``), oldest first.

        The original ``getEventHistory(n)``; undecodable records are left out.
        """
        if limit <= 0:
            return []
        records = await self._feed.before(await self._feed.ends(), count=limit, since_ms=None, patterns=(type,))
        return [record.event for record in records if record.event is not None]


def _memory_stats(
    broker: InMemoryBroker, connection: KafkaConnection, groups: Sequence[ConsumerGroup], subscriptions: int
) -> BusStats:
    by_type: dict[str, int] = {}
    ends: dict[Position, int] = {}
    for entity in CATALOG.topics:
        topic = connection.topic(entity)
        for partition, log in enumerate(broker.topics.get(topic, [])):
            ends[(topic, partition)] = broker.stable_end(log)
            for record in log:
                if broker.readable(record):
                    kind = next((v.decode() for k, v in record.headers if k == "event-type"), "unknown")
                    by_type[kind] = by_type.get(kind, 0) + 1
    lags = []
    for group in groups:
        committed = broker.group_offsets.get(group_id(connection, group), {})
        entry = GroupLag(group.name, list(group.event_types))
        for (topic, partition), end in sorted(ends.items()):
            if topic in {connection.topic(t) for t in group.topics}:
                offset = committed.get((topic, partition))
                lag = max(0, end - (offset or 0))
                entry.partitions.append(PartitionLag(topic, partition, offset, end, lag))
        lags.append(entry)
    return BusStats(
        total_events=sum(by_type.values()),
        subscription_count=subscriptions,
        events_by_type=dict(sorted(by_type.items())),
        groups=lags,
    )
