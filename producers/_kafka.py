"""The aiokafka-backed transport, and the conversion of aiokafka errors into ours."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError, UnknownError

from schemas.errors import (
    ConfigurationError,
    IdempotenceUnsupportedError,
    MessageTooLargeError,
    PublishFailedError,
    PublishTimeoutError,
)

from ._admin import kafka_admin
from ._config import KafkaConnection, PublisherConfig
from ._connect import connect_with_retry, convert_kafka_error
from ._partitioner import KeyPartitioner
from ._transport import Delivery, DoneCallback, OutgoingRecord

__all__ = ["KafkaProducerTransport"]


class KafkaProducerTransport:
    """Publishes records with aiokafka's producer.

    Example: ``EventPublisher(transport=KafkaProducerTransport(connection, config))``
    """

    def __init__(self, connection: KafkaConnection, config: PublisherConfig) -> None:
        self._connection = connection
        self._config = config
        self._producer: AIOKafkaProducer | None = None
        self._lanes: dict[tuple[str, int], _Lane] = {}
        self._filled: dict[tuple[str, int], _Lane] = {}  # lanes given records since their last ship request
        self._partition_counts: dict[str, int] = {}
        self._round_robin = 0
        self._partitioner = KeyPartitioner()
        self._linger_s = config.linger_ms / 1000
        self._soon: asyncio.Handle | None = None

    def _new_producer(self) -> AIOKafkaProducer:
        config = self._config
        options = self._connection.client_options()
        # A produce request may take as long as the delivery timeout allows.
        options["request_timeout_ms"] = int(config.delivery_timeout_s * 1000)
        return AIOKafkaProducer(
            **options,
            acks=config.acks,
            enable_idempotence=config.enable_idempotence,
            compression_type=None if config.compression == "none" else config.compression,
            linger_ms=0,  # fire-and-forget batches linger here (append); a second linger in aiokafka only adds latency
            max_batch_size=config.max_batch_bytes,
            max_request_size=config.max_message_bytes + 4096,
            transactional_id=config.transactional_id,
        )

    async def start(self) -> None:
        """Connect (retrying up to the connect timeout) and, if asked, register as idempotent."""
        try:
            producer = self._new_producer()
        except (RuntimeError, ValueError, AssertionError) as exc:  # aiokafka's checks of its own arguments
            msg = f"cannot create the producer: {exc}"
            raise ConfigurationError(msg) from exc
        try:
            await connect_with_retry(producer.start, self._connection, "producer")
        except UnknownError as exc:
            await producer.stop()
            if self._config.enable_idempotence:
                msg = (
                    "the broker refused InitProducerId, so an idempotent producer cannot start; "
                    "the embedded broker does not support idempotence: build the config with "
                    "PublisherConfig(enable_idempotence=False), or, for a config from the EVENTBUS_* settings, "
                    "set EVENTBUS_PRODUCER_IDEMPOTENCE=false (or EVENTBUS_PROFILE=embedded)"
                )
                raise IdempotenceUnsupportedError(msg) from exc
            raise convert_kafka_error(exc, "starting the producer", publishing=True) from exc
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def stop(self) -> None:
        """Flush and close the producer."""
        if self._producer is not None:
            await self._ship_all()
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            await asyncio.wait_for(producer.stop(), timeout=self._config.delivery_timeout_s)
        except (TimeoutError, KafkaError) as exc:
            raise convert_kafka_error(exc, "stopping the producer", publishing=True) from exc

    def _running(self) -> AIOKafkaProducer:
        if self._producer is None:
            msg = "the producer is not started (use `async with EventPublisher(...)`)"
            raise PublishFailedError(msg, retriable=False)
        return self._producer

    async def topic_names(self) -> set[str]:
        """Existing topics, asked with a metadata request that never auto-creates one."""
        async with kafka_admin(self._connection, "listing topics") as admin:
            return await admin.topic_names()

    async def enqueue(self, record: OutgoingRecord) -> asyncio.Future[Delivery]:
        """Add the record to its partition's open batch, as ``append`` does; the future resolves on its ack.

        Awaited records do not wait for the linger: a ship is asked for on the event loop's next turn, so what
        concurrent callers add in the same turn travels in one batch per partition, and a lone publish leaves at
        once. While the partition's previous batch waits for its place in a request, what callers add meanwhile
        gathers in the open batch and leaves as one. Its offset is the batch's base offset plus its place.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivery] = loop.create_future()
        count = self._partition_counts.get(record.topic)
        if count is None:
            count = await self._count_partitions(record.topic)
        self._place(record, count, future, None)
        if self._soon is None:
            self._soon = loop.call_soon(self._ship_soon)
        return future

    async def append(self, record: OutgoingRecord, token: object, done: DoneCallback) -> None:
        """Add the record to its partition's open batch; full batches ship at once, others ``linger_ms`` after the
        partition's first record since its last ship.

        The partition is the Java client's: murmur2 of the key (round robin without a key).
        """
        count = self._partition_counts.get(record.topic)
        if count is None:
            count = await self._count_partitions(record.topic)
        filled = self._place(record, count, token, done)
        if filled is not None and filled.shipper is not None:
            # a batch is full: wait until aiokafka has it, as aiokafka's own send() would; without this a
            # loop of send() calls never yields and the broker idles while it fills the whole buffer
            await asyncio.shield(filled.shipper)

    def _place(self, record: OutgoingRecord, count: int, token: object, done: DoneCallback | None) -> _Lane | None:
        """Append to the partition's open batch; ``done`` None: ``token`` is the future of an awaited record.

        Returns the lane when this record filled a batch (its shipper was started), else None."""
        producer = self._running()
        key = record.key
        if key is None:
            self._round_robin += 1
            partition = self._round_robin % count
        else:
            partition = self._partitioner.partition(key, count)
        tp = (record.topic, partition)
        lane = self._lanes.get(tp)
        if lane is None:
            lane = self._lanes[tp] = _Lane(tp)
        batches = lane.batches
        if not batches or batches[-1].full or batches[-1].settled:  # settled: timed out while open
            batches.append(self._new_batch(producer, tp))
        batch = batches[-1]
        if batch.builder.append(timestamp=None, key=key, value=record.value, headers=record.headers) is None:
            batch.full = True  # shipped as soon as the lane gets to it, whatever the linger
            self._ship_lane(lane, everything=False)
            batch = self._new_batch(producer, tp)
            if batch.builder.append(timestamp=None, key=key, value=record.value, headers=record.headers) is None:
                event_type = next((v.decode(errors="replace") for k, v in record.headers if k == "event-type"), "")
                error = MessageTooLargeError(len(record.value), self._config.max_batch_bytes, event_type)
                if done is None:
                    token.set_exception(error)  # type: ignore[attr-defined]
                else:
                    done(token, error)
                batch.disarm()
                return lane
            batches.append(batch)
            filled: _Lane | None = lane
        else:
            filled = None
        batch.add(token, done)
        self._filled[tp] = lane
        if done is not None and lane.linger is None:
            # one timer per partition, as the Java client lingers per batch: a partition ships linger_ms after its
            # own first record, not with every other partition on a publisher-wide beat
            lane.linger = asyncio.get_running_loop().call_later(self._linger_s, self._linger_expired, lane)
        return filled

    def _new_batch(self, producer: AIOKafkaProducer, tp: tuple[str, int]) -> _OpenBatch:
        """An empty batch for ``tp`` whose records fail with ``PublishTimeoutError`` unless acknowledged within the
        delivery timeout (one timer per batch, not per record)."""
        return _OpenBatch(producer.create_batch(), tp, self._config.delivery_timeout_s)

    async def _count_partitions(self, topic: str) -> int:
        try:
            partitions = await asyncio.wait_for(
                self._running().partitions_for(topic), timeout=self._connection.request_timeout_s
            )
        except (KafkaError, TimeoutError) as exc:
            raise convert_kafka_error(exc, f"reading the partitions of {topic}", publishing=True) from exc
        count = self._partition_counts[topic] = len(partitions)
        return count

    def _linger_expired(self, lane: _Lane) -> None:
        lane.linger = None
        if self._filled.pop(lane.tp, None) is not None:
            self._ship_lane(lane)

    def _ship_soon(self) -> None:
        self._soon = None
        self._ship_filled()

    def _ship_filled(self) -> None:
        """Ask every lane given records since its last request to ship them."""
        filled, self._filled = self._filled, {}
        for lane in filled.values():
            lane.stop_linger()
            self._ship_lane(lane)

    def _ship_lane(self, lane: _Lane, *, everything: bool = True) -> None:
        """Ask ``lane`` to ship its full batches, and unless ``everything`` is False its open one too (with what
        joins it before the lane gets there)."""
        if everything:
            lane.wanted = True
        if lane.shipper is None:
            lane.shipper = asyncio.get_running_loop().create_task(self._run_lane(lane), name=f"eventbus:ship:{lane.tp}")

    async def _run_lane(self, lane: _Lane) -> None:
        """Hand the lane's batches to aiokafka one after the other, in order.

        aiokafka takes a partition's next batch only once the previous one is in a request (one request in
        flight per broker), so while this waits, new records join the open batch instead of queueing as small
        batches of their own: under load, batches grow to what one round trip gathers.
        """
        batches = lane.batches
        try:
            while batches and (lane.wanted or batches[0].full):
                batch = batches.popleft()
                if not batches:
                    lane.wanted = False  # the open batch is taken: later records wait for their own request
                if batch.size and not batch.settled:  # settled already: timed out before its turn, never sent
                    await self._send(batch)
        finally:
            lane.shipper = None

    async def _send(self, batch: _OpenBatch) -> None:
        """Give one batch to aiokafka (waiting for the partition's previous one to be drained); settle it on the ack."""
        topic, partition = batch.tp
        try:
            while True:
                try:
                    sent = await self._running().send_batch(batch.builder, topic, partition=partition)
                    break
                except KafkaTimeoutError:
                    # aiokafka waits for the partition's previous batch to drain (a leader change retries it)
                    # and counts its wait short when it loops: wait on, up to our own delivery timeout
                    if time.monotonic() >= batch.deadline:
                        raise
        except KafkaError as exc:
            batch.settle(convert_kafka_error(exc, f"sending a batch to {topic}", publishing=True))
            return
        except PublishFailedError as exc:  # stopped meanwhile
            batch.settle(exc)
            return
        sent.add_done_callback(batch.on_sent)

    async def _ship_all(self) -> None:
        """Ship every lane's batches and wait until aiokafka has all of them."""
        self._ship_filled()
        while shippers := [lane.shipper for lane in self._lanes.values() if lane.shipper is not None]:
            await asyncio.gather(*shippers)
            self._ship_filled()

    async def flush(self) -> None:
        """Send what is buffered (our open batches, then aiokafka's)."""
        await self._ship_all()
        try:
            await asyncio.wait_for(self._running().flush(), timeout=self._config.delivery_timeout_s)
        except (TimeoutError, KafkaError) as exc:
            raise convert_kafka_error(exc, "flushing", publishing=True) from exc

    async def begin_transaction(self) -> None:
        """Open a transaction (the producer was created with the config's ``transactional_id``)."""
        await self._transaction_call("beginning a transaction", self._running().begin_transaction)

    async def commit_transaction(self) -> None:
        """Ship the open batches, then commit: the records become readable for read_committed consumers."""
        await self._ship_all()
        await self._transaction_call("committing a transaction", self._running().commit_transaction)

    async def abort_transaction(self) -> None:
        """Drop the batches not shipped yet (their records fail) and abort what was shipped."""
        self._filled.clear()
        for lane in self._lanes.values():
            lane.wanted = False
            lane.stop_linger()
            while lane.batches:
                lane.batches.popleft().settle(PublishFailedError("the transaction was aborted", retriable=False))
        await self._transaction_call("aborting a transaction", self._running().abort_transaction)

    async def _transaction_call(self, action: str, call: Any) -> None:
        try:
            await asyncio.wait_for(call(), timeout=self._config.delivery_timeout_s)
        except (TimeoutError, KafkaError) as exc:
            raise convert_kafka_error(exc, action, publishing=True) from exc


class _Lane:
    """A partition's way to aiokafka: its batches in order (full ones first, the open one last) and its shipper."""

    __slots__ = ("batches", "linger", "shipper", "tp", "wanted")

    def __init__(self, tp: tuple[str, int]) -> None:
        self.tp = tp
        self.batches: deque[_OpenBatch] = deque()
        self.wanted = False  # a ship was asked for: the open batch goes too
        self.shipper: asyncio.Task[None] | None = None
        self.linger: asyncio.TimerHandle | None = None  # ships the open batch linger_ms after its first record

    def stop_linger(self) -> None:
        """Drop the linger timer (the lane ships, or drops its batches, by other means)."""
        if self.linger is not None:
            self.linger.cancel()
            self.linger = None


class _OpenBatch:
    """A partition's batch being filled: per record, a fire-and-forget token and its callback, or a future.

    A record's offset is the batch's base offset (what the broker acknowledges) plus its place in the batch.
    Settled once: by the acknowledgement, a failure, or its deadline (the delivery timeout after it was opened),
    whichever comes first; what comes later is ignored.
    """

    __slots__ = ("builder", "deadline", "entries", "full", "settled", "timeout_s", "timer", "tp")

    def __init__(self, builder: Any, tp: tuple[str, int], timeout_s: float) -> None:
        self.builder = builder
        self.tp = tp
        self.full = False
        self.settled = False
        self.entries: list[tuple[object, DoneCallback | None]] = []
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(timeout_s, self._expired)

    @property
    def size(self) -> int:
        return len(self.entries)

    def add(self, token: object, done: DoneCallback | None) -> None:
        self.entries.append((token, done))

    def disarm(self) -> None:
        """Drop the deadline (the batch will never hold a record)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        topic, partition = self.tp
        msg = f"no acknowledgement within {self.timeout_s:g} s for {self.size} record(s) to {topic}/{partition}"
        self.settle(PublishTimeoutError(msg))

    def settle(self, error: BaseException | None, base_offset: int = -1) -> None:
        if self.settled:
            return
        self.settled = True
        self.disarm()
        topic, partition = self.tp
        for index, (token, done) in enumerate(self.entries):
            if done is not None:
                done(token, error)
                continue
            future: asyncio.Future[Delivery] = token  # type: ignore[assignment]
            if future.done():  # the caller gave up waiting (cancelled)
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(Delivery(topic, partition, base_offset + index))

    def on_sent(self, sent: asyncio.Future[Any]) -> None:
        if sent.cancelled():
            self.settle(PublishFailedError("a batch send was cancelled", retriable=True))
            return
        exc = sent.exception()
        if exc is None:
            self.settle(None, sent.result().offset)
            return
        error = convert_kafka_error(exc, "delivering a batch", publishing=True)
        error.__cause__ = exc
        self.settle(error)
