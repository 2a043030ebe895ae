"""The producer SDK: ``await publisher.publish(event)``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from uuid import UUID

from schemas import CATALOG, AvroCodec, Catalog, Event, EventSpec
from schemas.errors import (
    ConfigurationError,
    EventBusError,
    MessageTooLargeError,
    PublishFailedError,
    PublishTimeoutError,
    UnknownTopicError,
)

from ._config import KafkaConnection, PublisherConfig
from ._context import current_causation_id, current_correlation_id
from ._kafka import KafkaProducerTransport
from ._schema_registry import codec_for
from ._tracing import PublishTracing
from ._transport import Delivery, OutgoingRecord, ProducerTransport

__all__ = ["EventPublisher", "PublishResult"]

_TOPIC_REFRESH_S = 0.5
"""Least time between two lookups of the broker's topics when a topic is unknown: a topic created a moment
ago (Apache Kafka lists it only once its metadata has spread) is found, a missing one refused within a second."""
_TOPIC_LOOKUPS = 3
"""How many times an unknown topic is looked up before ``UnknownTopicError`` (about a second in all)."""
_MAX_KEPT_FAILURES = 1000


def _retrieve(future: asyncio.Future[Delivery]) -> None:
    """Mark a future's failure as seen (asyncio logs failures no one looked at)."""
    if not future.cancelled():
        future.exception()


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Where an event was stored. Example: ``(await publisher.publish(e)).offset``"""

    topic: str
    partition: int
    offset: int
    event_id: UUID
    event_type: str

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape the CLI prints."""
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset, "event_id": str(self.event_id)}


class EventPublisher:
    """Publishes catalog events to their entity topic, keyed by entity id.

    ``publish`` waits for the broker's acknowledgement; ``send`` is the
    fire-and-forget path (bounded by ``max_buffered_records``) whose failures
    ``flush`` raises. Metadata is completed on the way out: the publisher's
    service and version, and the correlation and causation ids of the
    caller's context.

    Example::

        async with EventPublisher(connection=KafkaConnection(), config=PublisherConfig()) as publisher:
            result = await publisher.publish(event)
    """

    def __init__(
        self,
        *,
        connection: KafkaConnection | None = None,
        config: PublisherConfig | None = None,
        transport: ProducerTransport | None = None,
        catalog: Catalog = CATALOG,
        codec: AvroCodec | None = None,
    ) -> None:
        self.connection = connection or KafkaConnection()
        self.config = config or PublisherConfig()
        self.catalog = catalog
        self._codec = codec or codec_for(self.connection, self.config, catalog)
        self._transport = transport or KafkaProducerTransport(self.connection, self.config)
        self._known_topics: set[str] = set()
        self._topics_checked_at = 0.0
        self._topic_names = {spec.event_type: self.connection.topic(spec.topic) for spec in catalog}
        self._type_headers = {spec.event_type: spec.event_type.encode() for spec in catalog}
        self._max_in_flight = self.config.max_buffered_records
        self._in_flight = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._room = asyncio.Event()  # set when a sender waiting for room may go on
        self._room_wanted = False
        self._failures: list[tuple[object, EventBusError]] = []
        self._failure_count = 0
        self._started = False
        self._transactional = self.config.transactional_id is not None
        self._in_transaction = False
        self._sendable = False  # started, and in a transaction when transactional
        self._tracing = PublishTracing.create()
        """OpenTelemetry spans and trace headers, or None (the usual case) when tracing is not configured."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close(flush=exc is None)

    async def start(self) -> None:
        """Connect and learn which topics exist; ``BrokerUnavailableError`` after the connect timeout."""
        await self._transport.start()
        try:
            await self.refresh_topics()
        except BaseException:
            await self._transport.stop()
            raise
        self._tracing = PublishTracing.create()  # again: the application may have configured it since
        self._started = True
        self._sendable = not self._transactional

    async def close(self, *, flush: bool = True) -> None:
        """Flush (unless told not to) and disconnect. Raises what ``flush`` raises."""
        if not self._started:
            return
        self._started = self._sendable = False
        try:
            if flush:
                await self.flush()
        finally:
            await self._transport.stop()

    def _require_started(self) -> None:
        if self._sendable:
            return
        if not self._started:
            raise PublishFailedError("the publisher is not started (use `async with`)", retriable=False)
        msg = "a transactional publisher sends only inside `async with publisher.transaction():`"
        raise PublishFailedError(msg, retriable=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """Publish atomically: what is sent or published in the block is read (read_committed) only if it commits.

        The block commits when it ends without error, after every record of it was acknowledged;
        on an error it aborts and the error propagates. Needs ``PublisherConfig(transactional_id=...)``;
        one transaction at a time per publisher, so use one publisher per task that publishes transactionally.

        Example: ``async with publisher.transaction(): await publisher.send(event)``
        """
        if not self._transactional:
            msg = "transactions need a transactional publisher: PublisherConfig(transactional_id=...)"
            raise ConfigurationError(msg)
        if not self._started:
            raise PublishFailedError("the publisher is not started (use `async with`)", retriable=False)
        if self._in_transaction:
            raise PublishFailedError("a transaction is already open on this publisher", retriable=False)
        self._in_transaction = True
        try:
            await self._transport.begin_transaction()
            self._sendable = True
            try:
                yield
                await self.flush()
            except BaseException as exc:
                self._sendable = False
                try:
                    await self._transport.abort_transaction()
                except EventBusError as abort_error:  # the broker times the transaction out in the end
                    exc.add_note(f"aborting the transaction failed too: {abort_error.message}")
                raise
            self._sendable = False
            await self._transport.commit_transaction()
        finally:
            self._sendable = False
            self._in_transaction = False

    async def refresh_topics(self) -> None:
        """Learn the broker's topics again (after creating some); publishing checks against them."""
        self._known_topics = await self._transport.topic_names()
        self._topics_checked_at = time.monotonic()

    async def _check_topic(self, topic: str) -> None:
        if topic in self._known_topics:
            return
        for _ in range(_TOPIC_LOOKUPS):  # a topic created a moment ago may take a moment to be listed
            if time.monotonic() - self._topics_checked_at < _TOPIC_REFRESH_S:
                await asyncio.sleep(_TOPIC_REFRESH_S)
            await self.refresh_topics()
            if topic in self._known_topics:
                return
        reason = f"topic {topic!r} does not exist on the broker; create it with `eventbus topics apply`"
        raise UnknownTopicError(topic, reason=reason)

    def prepare(self, event: Event) -> OutgoingRecord:
        """The record ``event`` becomes, metadata completed on the wire.

        Completes the publisher's service and version (unless the event set them) and the
        context's correlation and causation (unless the event has its own), without copying
        the model. Raises before anything is sent: ``UnknownEventTypeError``, ``EncodeError``,
        ``MessageTooLargeError``. Example: ``publisher.prepare(event).key``
        """
        spec: EventSpec = self.catalog.spec_for(event)
        meta = event.metadata
        event_id = str(meta.event_id)
        updates: dict[str, Any] = {"event_id": event_id}  # the Avro uuid as text: for the body and the header
        given = meta.__pydantic_fields_set__
        if "service" not in given:
            updates["service"] = self.config.service
        if "version" not in given:
            updates["version"] = self.config.service_version
        correlation = meta.correlation_id
        if correlation is None and (correlation := current_correlation_id()) is not None:
            updates["correlation_id"] = correlation
        causation = meta.causation_id
        if causation is None and (causation := current_causation_id()) is not None:
            updates["causation_id"] = causation
        value = self._codec.encode_with(spec, event, updates)
        if len(value) > self.config.max_message_bytes:
            raise MessageTooLargeError(len(value), self.config.max_message_bytes, spec.event_type)
        headers = [("event-type", self._type_headers[spec.event_type]), ("event-id", event_id.encode())]
        if correlation is not None:
            headers.append(("correlation-id", correlation.encode()))
        if causation is not None:
            headers.append(("causation-id", str(causation).encode()))
        if self._tracing is not None:
            self._tracing.inject(headers)  # the current span's: publish()'s own, or the caller's
        return OutgoingRecord(self._topic_names[spec.event_type], spec.key_of(event).encode(), value, headers)

    async def _enqueue(self, record: OutgoingRecord) -> asyncio.Future[Delivery]:
        """Hand an awaited record to the transport; it counts in the buffer bound until it is settled."""
        if record.topic not in self._known_topics:
            await self._check_topic(record.topic)
        future = await self._transport.enqueue(record)
        self._in_flight += 1
        if self._in_flight == 1:
            self._drained.clear()
        future.add_done_callback(self._settled_future)
        return future

    def _settled_future(self, _future: asyncio.Future[Delivery]) -> None:
        self._settled()

    async def _settle(self, future: asyncio.Future[Delivery], event: Event) -> PublishResult:
        # No timer per call: the transport settles every record within the delivery timeout (the Kafka
        # transport with one deadline per batch), which costs a fraction of a timer per awaited publish.
        try:
            delivery = await future
        except PublishTimeoutError as exc:
            raise self._timed_out(event) from exc
        return PublishResult(delivery.topic, delivery.partition, delivery.offset, event.event_id, event.event_type)

    def _timed_out(self, event: Event) -> PublishTimeoutError:
        waited = self.config.delivery_timeout_s
        return PublishTimeoutError(f"no acknowledgement for {event.event_type} {event.event_id} within {waited:g} s")

    async def publish(self, event: Event) -> PublishResult:
        """Publish one event and wait for the broker's acknowledgement.

        Awaited events join the same per-partition batches as ``send()`` (so many concurrent callers
        share requests, and one task's ``publish`` and ``send`` keep their order per key), and count in
        ``max_buffered_records``: a caller waits for room when the buffer is full.
        Example: ``result = await publisher.publish(SessionCreated(...))``
        """
        if self._tracing is not None:
            return await self._publish_traced(event, self._tracing)
        if self._in_flight >= self._max_in_flight:
            await self._wait_for_room()
        if not self._sendable:
            self._require_started()
        # The hot path of a service, written out: no helper coroutines and no done callback per record.
        record = self.prepare(event)
        if record.topic not in self._known_topics:
            await self._check_topic(record.topic)
        future = await self._transport.enqueue(record)
        self._in_flight += 1
        if self._in_flight == 1:
            self._drained.clear()
        try:
            delivery = await future
        except PublishTimeoutError as exc:
            raise self._timed_out(event) from exc
        finally:
            self._settled()  # a caller cancelled meanwhile stops counting: its record may still be on its way
        return PublishResult(delivery.topic, delivery.partition, delivery.offset, event.event_id, event.event_type)

    async def _publish_traced(self, event: Event, tracing: PublishTracing) -> PublishResult:
        """``publish`` inside its producer span (whose context ``prepare`` puts in the headers)."""
        span = tracing.start(self._topic_names.get(event.event_type, event.event_type))
        with tracing.current(span):
            if self._in_flight >= self._max_in_flight:
                await self._wait_for_room()
            if not self._sendable:
                self._require_started()
            record = self.prepare(event)
            tracing.prepared(span, record, event)
            result = await self._settle(await self._enqueue(record), event)
            tracing.delivered(span, result.partition, result.offset)
            return result

    async def publish_record(self, record: OutgoingRecord) -> Delivery:
        """Publish raw bytes (for example a dead letter's original record, replayed) and wait for the ack.

        The topic must exist and the value respect ``max_message_bytes``; the bytes are not decoded.
        """
        self._require_started()
        if len(record.value) > self.config.max_message_bytes:
            raise MessageTooLargeError(len(record.value), self.config.max_message_bytes)
        await self._check_topic(record.topic)
        future = await self._enqueue(record)
        try:
            async with asyncio.timeout(self.config.delivery_timeout_s):
                return await future
        except TimeoutError as exc:
            msg = f"no acknowledgement for a record to {record.topic} within {self.config.delivery_timeout_s:g} s"
            raise PublishTimeoutError(msg) from exc

    async def publish_records(self, records: Sequence[OutgoingRecord]) -> list[Delivery | EventBusError]:
        """Publish raw records together (they join the same batches) and wait for every acknowledgement.

        One result per record, in order: its ``Delivery``, or the error that concerns that record alone
        (``MessageTooLargeError``, ``UnknownTopicError``, a broker error, ``PublishTimeoutError``), so a caller
        such as the outbox relay can set a poison record aside and keep the others.
        Example: ``results = await publisher.publish_records(records)``
        """
        self._require_started()
        results: list[Delivery | EventBusError | None] = [None] * len(records)
        waiting: dict[asyncio.Future[Delivery], int] = {}
        limit = self.config.max_message_bytes
        for index, record in enumerate(records):
            if len(record.value) > limit:
                results[index] = MessageTooLargeError(len(record.value), limit)
                continue
            if record.topic not in self._known_topics:
                try:
                    await self._check_topic(record.topic)
                except UnknownTopicError as exc:
                    results[index] = exc
                    continue
            if self._in_flight >= self._max_in_flight:
                await self._wait_for_room()
            waiting[await self._enqueue(record)] = index
        if waiting:
            done, late = await asyncio.wait(waiting, timeout=self.config.delivery_timeout_s)
            for future in done:
                error = future.exception()
                if error is None:
                    results[waiting[future]] = future.result()
                elif isinstance(error, EventBusError):
                    results[waiting[future]] = error
                else:
                    raise error
            for future in late:
                waited = self.config.delivery_timeout_s
                results[waiting[future]] = PublishTimeoutError(f"no acknowledgement within {waited:g} s")
        return [result for result in results if result is not None]

    async def publish_many(self, events: list[Event]) -> list[PublishResult]:
        """Publish several events and wait for all acknowledgements; all are checked before any is sent."""
        if self._tracing is not None:
            return await self._publish_many_traced(events, self._tracing)
        return await self._publish_many(events)

    async def _publish_many_traced(self, events: list[Event], tracing: PublishTracing) -> list[PublishResult]:
        """``publish_many`` inside one producer span (``messaging.batch.message_count``) that every record carries."""
        topics = {self._topic_names.get(event.event_type, event.event_type) for event in events}
        span = tracing.start(topics.pop() if len(topics) == 1 else "(several)", count=len(events))
        with tracing.current(span):
            return await self._publish_many(events)

    async def _publish_many(self, events: list[Event]) -> list[PublishResult]:
        prepared = [self.prepare(event) for event in events]
        self._require_started()
        for topic in {record.topic for record in prepared}:
            await self._check_topic(topic)
        if self._in_flight >= self._max_in_flight:
            await self._wait_for_room()
        enqueue = self._transport.enqueue
        futures: list[asyncio.Future[Delivery]] = []
        try:
            for record in prepared:
                futures.append(await enqueue(record))
                self._in_flight += 1  # counted one by one: a failure half-way settles exactly what was added
                if self._in_flight == 1:
                    self._drained.clear()
            results = []
            for future, event in zip(futures, events, strict=False):  # in order: most are done by then
                try:
                    delivery = await future
                except PublishTimeoutError as exc:
                    raise self._timed_out(event) from exc
                results.append(
                    PublishResult(delivery.topic, delivery.partition, delivery.offset, event.event_id, event.event_type)
                )
        except BaseException:
            for future in futures:  # the ones not awaited: their own failures are part of this one
                future.add_done_callback(_retrieve)
            raise
        finally:
            self._settled(len(futures))
        return results

    async def send(self, event: Event) -> UUID:
        """Fire and forget: buffer the event and return its id without waiting for the broker.

        Records are batched per partition (keys still choose the partition).
        Waits only when ``max_buffered_records`` are unacknowledged. Failures are
        raised by the next ``flush()``. Example: ``await publisher.send(event)``
        """
        if self._tracing is not None:
            return await self._send_traced(event, self._tracing)
        if self._in_flight >= self._max_in_flight:
            await self._wait_for_room()
        if not self._sendable:
            self._require_started()
        record = self.prepare(event)
        if record.topic not in self._known_topics:
            await self._check_topic(record.topic)
        event_id = event.metadata.event_id
        self._in_flight += 1
        if self._in_flight == 1:
            self._drained.clear()
        try:
            await self._transport.append(record, event_id, self._on_sent)
        except BaseException:
            self._settled()
            raise
        return event_id

    async def _send_traced(self, event: Event, tracing: PublishTracing) -> UUID:
        """``send`` in a producer span that ends with the broker's acknowledgement (or the failure)."""
        span = tracing.start(self._topic_names.get(event.event_type, event.event_type))
        with tracing.current(span, end=False):  # ended by the delivery callback, or here on an error
            if self._in_flight >= self._max_in_flight:
                await self._wait_for_room()
            if not self._sendable:
                self._require_started()
            record = self.prepare(event)
            tracing.prepared(span, record, event)
            if record.topic not in self._known_topics:
                await self._check_topic(record.topic)
            event_id = event.metadata.event_id
            self._in_flight += 1
            if self._in_flight == 1:
                self._drained.clear()
            try:
                await self._transport.append(record, event_id, tracing.on_sent(span, self._on_sent))
            except BaseException:
                self._settled()
                raise
        return event_id

    async def _wait_for_room(self) -> None:
        while self._in_flight >= self._max_in_flight:
            self._room.clear()
            self._room_wanted = True
            await self._room.wait()

    def _on_sent(self, token: object, error: BaseException | None) -> None:
        self._settled()
        if error is not None:
            failure = error if isinstance(error, EventBusError) else PublishFailedError(repr(error))
            self._record_failure(token, failure)

    def _settled(self, count: int = 1) -> None:
        self._in_flight -= count
        if not self._in_flight:
            self._drained.set()
        if self._room_wanted and self._in_flight < self._max_in_flight:
            self._room_wanted = False
            self._room.set()

    def _record_failure(self, event_id: object, error: EventBusError) -> None:
        self._failure_count += 1
        if len(self._failures) < _MAX_KEPT_FAILURES:
            self._failures.append((event_id, error))

    @property
    def pending(self) -> int:
        """Events given to ``send`` and not yet acknowledged."""
        return self._in_flight

    async def flush(self) -> None:
        """Wait until every ``send`` is acknowledged; raise ``PublishFailedError`` listing the failures."""
        if not self._started:
            return
        await self._transport.flush()
        try:
            await asyncio.wait_for(self._drained.wait(), timeout=self.config.delivery_timeout_s)
        except TimeoutError as exc:
            msg = f"{self._in_flight} events not acknowledged within {self.config.delivery_timeout_s:g} s"
            raise PublishTimeoutError(msg) from exc
        if self._failure_count:
            failures, count = self._failures, self._failure_count
            self._failures, self._failure_count = [], 0
            first_id, first = failures[0]
            raise PublishFailedError(
                f"{count} events were not delivered; first {first_id}: {first.message}",
                retriable=all(err.retriable for _, err in failures),
                failures=list(failures),
            ) from first
