"""An experimental librdkafka (confluent-kafka) producer transport, for the benchmarks only.

It plugs into the unchanged SDK (``EventPublisher(transport=...)``) to measure whether a
librdkafka transport would lift the publish ceiling that aiokafka's pure-Python producer sets.
confluent-kafka's own asyncio producer (``confluent_kafka.aio.AIOProducer``) refuses headers
("not supported in AIOProducer batch mode"), and the SDK sends ``event-type`` / ``event-id``
headers, so this transport drives the plain ``Producer`` from the event loop instead:
``produce()`` never blocks, and ``poll(0)`` runs the delivery callbacks on the loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from producers import Delivery, KafkaConnection, OutgoingRecord, PublisherConfig
from producers._transport import DoneCallback
from schemas.errors import BrokerUnavailableError, PublishFailedError, PublishTimeoutError

__all__ = ["ConfluentProducerTransport", "confluent_config"]

_POLL_EVERY = 1000
_POLL_INTERVAL_S = 0.002


def confluent_config(connection: KafkaConnection, config: PublisherConfig) -> dict[str, Any]:
    """librdkafka settings equal to the SDK's aiokafka ones; murmur2 so keys land where aiokafka puts them."""
    return {
        "bootstrap.servers": connection.bootstrap_servers,
        "client.id": connection.client_id,
        "acks": "all" if config.acks == "all" else str(config.acks),
        "enable.idempotence": config.enable_idempotence,
        "compression.type": config.compression,
        "linger.ms": config.linger_ms,
        "batch.size": config.max_batch_bytes,
        "message.max.bytes": config.max_message_bytes + 4096,
        "delivery.timeout.ms": int(config.delivery_timeout_s * 1000),
        "partitioner": "murmur2_random",
    }


def _delivered(future: asyncio.Future[Delivery], err: KafkaError | None, msg: Message) -> None:
    if future.done():
        return
    if err is not None:
        future.set_exception(PublishFailedError(f"delivery failed: {err.str()}", retriable=bool(err.retriable())))
        return
    future.set_result(Delivery(str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0)))


def _acknowledged(done: DoneCallback, token: object, err: KafkaError | None, _msg: Message) -> None:
    if err is None:
        done(token, None)
    else:
        done(token, PublishFailedError(f"delivery failed: {err.str()}", retriable=bool(err.retriable())))


class ConfluentProducerTransport:
    """``ProducerTransport`` on librdkafka. Example: ``EventPublisher(transport=ConfluentProducerTransport(c, p))``"""

    def __init__(self, connection: KafkaConnection, config: PublisherConfig) -> None:
        self._connection = connection
        self._config = config
        self._producer: Producer | None = None
        self._poller: asyncio.Task[None] | None = None
        self._since_poll = 0

    def _running(self) -> Producer:
        if self._producer is None:
            raise PublishFailedError("the producer is not started", retriable=False)
        return self._producer

    async def start(self) -> None:
        """Create the producer and check the broker answers."""
        self._producer = Producer(confluent_config(self._connection, self._config))
        await self.topic_names()
        self._poller = asyncio.create_task(self._poll_loop())

    async def _poll_loop(self) -> None:
        producer = self._running()
        while True:
            producer.poll(0)
            await asyncio.sleep(_POLL_INTERVAL_S)

    async def stop(self) -> None:
        """Deliver what is buffered, then stop polling."""
        if self._producer is None:
            return
        try:
            await self.flush()
        finally:
            if self._poller is not None:
                self._poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._poller
            self._producer = None

    async def topic_names(self) -> set[str]:
        """The broker's topics (a metadata request, run off the loop)."""
        producer = self._running()
        timeout = self._connection.connect_timeout_s
        loop = asyncio.get_running_loop()
        try:
            metadata = await loop.run_in_executor(None, partial(producer.list_topics, timeout=timeout))
        except KafkaException as exc:
            raise BrokerUnavailableError(f"listing topics failed: {exc}") from exc
        return set(metadata.topics)

    async def enqueue(self, record: OutgoingRecord) -> asyncio.Future[Delivery]:
        """Hand the record to librdkafka; the future resolves in a delivery callback."""
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        await self._produce(record, partial(_delivered, future))
        return future

    async def append(self, record: OutgoingRecord, token: object, done: DoneCallback) -> None:
        """Fire and forget: hand the record to librdkafka; ``done(token, error)`` runs on delivery."""
        await self._produce(record, partial(_acknowledged, done, token))

    async def _produce(self, record: OutgoingRecord, callback: Callable[[KafkaError | None, Message], None]) -> None:
        producer = self._running()
        headers: list[tuple[str, str | bytes | None]] = list(record.headers)
        while True:
            try:
                producer.produce(record.topic, record.value, record.key, headers=headers, on_delivery=callback)
                break
            except BufferError:  # librdkafka's queue is full: let deliveries drain
                producer.poll(0)
                await asyncio.sleep(0.001)
        self._since_poll += 1
        if self._since_poll >= _POLL_EVERY:
            self._since_poll = 0
            producer.poll(0)

    async def flush(self) -> None:
        """Wait (polling on the loop) until librdkafka has no message left in flight."""
        producer = self._running()
        deadline = time.monotonic() + self._config.delivery_timeout_s
        while len(producer) > 0:
            if time.monotonic() > deadline:
                raise PublishTimeoutError(f"{len(producer)} records not delivered in time")
            producer.poll(0)
            await asyncio.sleep(0.001)
        producer.poll(0)
