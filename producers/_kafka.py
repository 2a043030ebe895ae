"""The aiokafka-backed transport, and the conversion of aiokafka errors into ours."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError, UnknownError

from schemas.errors import (
    ConfigurationError,
    IdempotenceUnsupportedError,
    MessageTooLargeError,
    PublishFailedError,
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
        self._open: dict[tuple[str, int], _OpenBatch] = {}
        self._partition_counts: dict[str, int] = {}
        self._round_robin = 0
        self._partitioner = KeyPartitioner()
        self._linger: asyncio.TimerHandle | None = None
        self._soon: asyncio.Handle | None = None
        self._shipping: set[asyncio.Task[None]] = set()
        self._ship_locks: dict[tuple[str, int], asyncio.Lock] = {}

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

        Awaited records do not wait for the linger: the open batches ship on the event loop's next turn,
        so what concurrent callers add in the same turn travels in one batch per partition, and a lone
        publish leaves at once. Its offset is the batch's base offset plus its place in the batch.
        """
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        await self._add(record, future, None)
        if self._soon is None:
            self._soon = asyncio.get_running_loop().call_soon(self._ship_soon)
        return future

    async def append(self, record: OutgoingRecord, token: object, done: DoneCallback) -> None:
        """Add the record to its partition's open batch; full batches ship at once, others after ``linger_ms``.

        The partition is the Java client's: murmur2 of the key (round robin without a key).
        """
        await self._add(record, token, done)
        if self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(self._config.linger_ms / 1000, self._linger_expired)

    async def _add(self, record: OutgoingRecord, token: object, done: DoneCallback | None) -> None:
        """Append to the partition's open batch; ``done`` None: ``token`` is the future of an awaited record."""
        producer = self._running()
        topic, key = record.topic, record.key
        count = self._partition_counts.get(topic)
        if count is None:
            count = self._partition_counts[topic] = await self._count_partitions(producer, topic)
        if key is None:
            self._round_robin += 1
            partition = self._round_robin % count
        else:
            partition = self._partitioner.partition(key, count)
        tp = (topic, partition)
        batch = self._open.get(tp)
        if batch is None:
            batch = self._open[tp] = _OpenBatch(producer.create_batch(), tp)
        if batch.builder.append(timestamp=None, key=key, value=record.value, headers=record.headers) is None:
            await self._ship(tp)
            batch = self._open[tp] = _OpenBatch(producer.create_batch(), tp)
            if batch.builder.append(timestamp=None, key=key, value=record.value, headers=record.headers) is None:
                event_type = next((v.decode(errors="replace") for k, v in record.headers if k == "event-type"), "")
                error = MessageTooLargeError(len(record.value), self._config.max_batch_bytes, event_type)
                if done is None:
                    token.set_exception(error)  # type: ignore[attr-defined]
                else:
                    done(token, error)
                return
        batch.add(token, done)

    async def _count_partitions(self, producer: AIOKafkaProducer, topic: str) -> int:
        try:
            partitions = await asyncio.wait_for(
                producer.partitions_for(topic), timeout=self._connection.request_timeout_s
            )
        except (KafkaError, TimeoutError) as exc:
            raise convert_kafka_error(exc, f"reading the partitions of {topic}", publishing=True) from exc
        return len(partitions)

    def _linger_expired(self) -> None:
        self._linger = None
        self._ship_in_task()

    def _ship_soon(self) -> None:
        self._soon = None
        self._ship_in_task()

    def _ship_in_task(self) -> None:
        task = asyncio.get_running_loop().create_task(self._ship_all())
        self._shipping.add(task)
        task.add_done_callback(self._shipping.discard)

    async def _ship_all(self) -> None:
        for tp in list(self._open):
            await self._ship(tp)

    async def _ship(self, tp: tuple[str, int]) -> None:
        batch = self._open.pop(tp, None)
        if batch is None or not batch.size:
            return
        deadline = time.monotonic() + self._config.delivery_timeout_s
        lock = self._ship_locks.get(tp)
        if lock is None:
            lock = self._ship_locks[tp] = asyncio.Lock()
        try:
            async with lock:  # a partition's batches reach the accumulator in the order they were closed
                while True:
                    try:
                        sent = await self._running().send_batch(batch.builder, tp[0], partition=tp[1])
                        break
                    except KafkaTimeoutError:
                        # aiokafka waits for the partition's previous batch to drain (a leader change retries
                        # it) and counts its wait short when it loops: wait on, up to our own delivery timeout
                        if time.monotonic() >= deadline:
                            raise
        except KafkaError as exc:
            batch.settle(convert_kafka_error(exc, f"sending a batch to {tp[0]}", publishing=True))
            return
        sent.add_done_callback(batch.on_sent)

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
        for tp in list(self._open):
            batch = self._open.pop(tp)
            batch.settle(PublishFailedError("the transaction was aborted", retriable=False))
        await self._transaction_call("aborting a transaction", self._running().abort_transaction)

    async def _transaction_call(self, action: str, call: Any) -> None:
        try:
            await asyncio.wait_for(call(), timeout=self._config.delivery_timeout_s)
        except (TimeoutError, KafkaError) as exc:
            raise convert_kafka_error(exc, action, publishing=True) from exc


class _OpenBatch:
    """A partition's batch being filled: per record, a fire-and-forget token and its callback, or a future.

    A record's offset is the batch's base offset (what the broker acknowledges) plus its place in the batch.
    """

    __slots__ = ("builder", "entries", "tp")

    def __init__(self, builder: Any, tp: tuple[str, int]) -> None:
        self.builder = builder
        self.tp = tp
        self.entries: list[tuple[object, DoneCallback | None]] = []

    @property
    def size(self) -> int:
        return len(self.entries)

    def add(self, token: object, done: DoneCallback | None) -> None:
        self.entries.append((token, done))

    def settle(self, error: BaseException | None, base_offset: int = -1) -> None:
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
