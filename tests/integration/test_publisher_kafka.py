"""The publisher contract on real Kafka-protocol brokers, read back with an independent client.

Records are read with confluent-kafka (librdkafka), never with aiokafka, which the SDK uses.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from infra._settings import Settings
from infra._topics import TOPIC_SPECS
from producers import EventPublisher, KafkaConnection, PublisherConfig, PublishResult
from schemas import CATALOG, AvroCodec, BrokerUnavailableError, Event, IdempotenceUnsupportedError
from tests.events_factory import example_event
from tests.publisher_contract import PublisherContract, RawRecord, as_stamped

pytestmark = pytest.mark.integration

_READ_DEADLINE_S = 20.0
_IDLE_S = 1.0


def _consumer(bootstrap: str) -> Any:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid4().hex}",
            "enable.auto.commit": False,
            "allow.auto.create.topics": False,
            "fetch.wait.max.ms": 50,
        }
    )


def _topic_partitions(bootstrap: str, topic: str | None) -> dict[str, int]:
    consumer = _consumer(bootstrap)
    try:
        metadata = consumer.list_topics(topic, timeout=10)
    finally:
        consumer.close()
    return {name: len(meta.partitions) for name, meta in metadata.topics.items() if meta.error is None}


def _read(bootstrap: str, topic: str, count: int) -> list[RawRecord]:
    """All records of ``topic``: at least ``count`` (or until ~1 s of silence), then what is readily there.

    The end offsets the embedded broker reports are wrong, so no watermark is asked.
    """
    consumer = _consumer(bootstrap)
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        found: list[RawRecord] = []
        deadline = time.monotonic() + _READ_DEADLINE_S
        idle_since = time.monotonic()
        while time.monotonic() < deadline:
            # consume() returns early only once it has num_messages: ask for exactly what is missing.
            missing = count - len(found)
            batch = (
                consumer.consume(num_messages=missing, timeout=0.5) if missing > 0 else consumer.consume(10_000, 0.1)
            )
            for message in batch:
                if message.error() is not None:
                    raise AssertionError(f"reading {topic}: {message.error()}")
                headers = [(k, bytes(v or b"")) for k, v in message.headers() or []]
                found.append(RawRecord(message.partition(), message.offset(), message.key(), message.value(), headers))
            if batch:
                idle_since = time.monotonic()
            elif missing <= 0 and (count > 0 or time.monotonic() - idle_since >= _IDLE_S):
                break
        return found
    finally:
        consumer.close()


@dataclass
class KafkaHarness:
    """``PublisherHarness`` over a real broker: the SDK publishes, confluent-kafka reads."""

    settings: Settings
    connection: KafkaConnection
    config: PublisherConfig

    @classmethod
    def for_settings(cls, settings: Settings) -> KafkaHarness:
        return cls(settings, settings.connection(), settings.publisher_config("test-service"))

    def publisher(self, *, connection: KafkaConnection | None = None, **config: Any) -> EventPublisher:
        merged = PublisherConfig.model_validate({**self.config.model_dump(), **config})
        return EventPublisher(connection=connection or self.connection, config=merged)

    async def records(self, topic: str, count: int) -> list[RawRecord]:
        found = await asyncio.to_thread(_read, self.settings.connection().bootstrap_servers, topic, count)
        assert len(found) >= count, f"{topic}: {len(found)} records, expected at least {count}"
        return found

    async def partitions(self, topic: str) -> int:
        return (await asyncio.to_thread(_topic_partitions, self.settings.connection().bootstrap_servers, topic))[topic]

    async def topic_exists(self, topic: str) -> bool:
        return topic in await asyncio.to_thread(_topic_partitions, self.settings.connection().bootstrap_servers, None)

    def unapplied_connection(self) -> KafkaConnection:
        return self.connection.model_copy(update={"topic_prefix": f"u{uuid4().hex[:10]}."})


async def _delete_topics(connection: KafkaConnection) -> None:
    admin = AIOKafkaAdminClient(**connection.client_options())
    await admin.start()
    try:
        await asyncio.wait_for(admin.delete_topics([connection.topic(s.name) for s in TOPIC_SPECS]), timeout=10)
    finally:
        await admin.close()


@pytest.fixture
async def harness(settings: Settings) -> AsyncIterator[KafkaHarness]:
    value = KafkaHarness.for_settings(settings)
    yield value
    await _delete_topics(value.connection)  # keep the session-wide broker small


class TestPublisherOnKafka(PublisherContract):
    """The shared publisher contract, on the embedded broker and on Apache Kafka."""


# -- Kafka-only behaviours ----------------------------------------------------------


async def test_every_event_type_published_by_the_sdk_is_read_and_decoded_by_confluent_kafka(
    harness: KafkaHarness,
) -> None:
    events = [example_event(event_type) for event_type in CATALOG.event_types]
    async with harness.publisher() as publisher:
        results = await publisher.publish_many(events)
    per_topic: dict[str, int] = {}
    for result in results:
        per_topic[result.topic] = per_topic.get(result.topic, 0) + 1
    stored = {r.event_id: r for topic, n in per_topic.items() for r in await harness.records(topic, n)}
    codec = AvroCodec()
    for event, result in zip(events, results, strict=True):
        record = stored[event.event_id]
        assert (record.partition, record.offset) == (result.partition, result.offset)
        assert record.header("event-type") == event.event_type.encode()
        assert record.key == CATALOG.spec_for(event).key_of(event).encode()
        assert codec.decode(record.value) == as_stamped(event, harness.config)


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_broker_raises_broker_unavailable_within_the_connect_timeout() -> None:
    connection = KafkaConnection(bootstrap_servers=f"127.0.0.1:{_unused_port()}", connect_timeout_s=1.5)
    config = PublisherConfig(service="test-service", enable_idempotence=False)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as info:
        async with EventPublisher(connection=connection, config=config):
            pass
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert connection.bootstrap_servers in str(info.value)


async def test_idempotent_producer_works_on_apache_kafka_and_is_refused_clearly_by_the_embedded_broker(
    kafka_target: Any, settings: Settings
) -> None:
    kafka_profile = settings.model_copy(update={"profile": "kafka"})
    config = kafka_profile.publisher_config("test-service")
    assert config.enable_idempotence
    if kafka_target.name == "embedded":
        with pytest.raises(IdempotenceUnsupportedError) as info:
            async with EventPublisher(connection=kafka_profile.connection(), config=config):
                pass
        assert "EVENTBUS_PRODUCER_IDEMPOTENCE=false" in str(info.value)
        return
    event = example_event("session:created")
    async with EventPublisher(connection=kafka_profile.connection(), config=config) as publisher:
        position = await publisher.publish(event)
    assert position.topic == kafka_profile.connection().topic("session")
    assert position.offset >= 0


@pytest.mark.parametrize("compression", ["gzip", "lz4", "zstd", "snappy"])
async def test_compressed_records_round_trip(harness: KafkaHarness, compression: str) -> None:
    events = [example_event("session:created", session_id=f"session-{n}", coach_name="z" * 300) for n in range(50)]
    async with harness.publisher(compression=compression) as publisher:
        for event in events:
            await publisher.send(event)
        await publisher.flush()
    stored = await harness.records(harness.connection.topic("session"), len(events))
    codec = AvroCodec()
    assert sorted(codec.decode(r.value).event_id for r in stored) == sorted(e.event_id for e in events)


async def test_concurrent_awaited_publishes_get_the_exact_positions_an_independent_reader_finds(
    harness: KafkaHarness,
) -> None:
    """publish() from many tasks joins per-partition batches; each caller's offset is its record's own."""
    events = [example_event("session:created", session_id=f"conc-{n % 37}") for n in range(600)]
    async with harness.publisher() as publisher:

        async def one(event: Event) -> PublishResult:
            return await publisher.publish(event)

        results = await asyncio.gather(*(one(event) for event in events))
    stored = {r.event_id: r for r in await harness.records(results[0].topic, len(events))}
    positions = [(r.partition, r.offset) for r in results]
    assert len(set(positions)) == len(events), "every caller has its own position"
    for event, result in zip(events, results, strict=True):
        assert (stored[event.event_id].partition, stored[event.event_id].offset) == (result.partition, result.offset)
