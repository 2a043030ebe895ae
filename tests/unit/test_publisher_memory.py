"""The publisher contract on the in-memory fake broker, plus what only the fake can simulate."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from consumers.testing import InMemoryBroker
from infra._topics import TOPIC_SPECS
from producers import (
    EventPublisher,
    KafkaConnection,
    KeyPartitioner,
    PublisherConfig,
    murmur2_partition,
    native_murmur2_partition,
)
from schemas import BrokerUnavailableError, PublishFailedError
from tests.events_factory import example_event
from tests.publisher_contract import PublisherContract, RawRecord


@dataclass
class MemoryHarness:
    """``PublisherHarness`` over an ``InMemoryBroker`` with the entity topics under a prefix."""

    broker: InMemoryBroker = field(default_factory=InMemoryBroker)
    connection: KafkaConnection = field(default_factory=lambda: KafkaConnection(topic_prefix="mem."))
    config: PublisherConfig = field(default_factory=lambda: PublisherConfig(service="test-service"))

    def __post_init__(self) -> None:
        for spec in TOPIC_SPECS:
            self.broker.create_topic(self.connection.topic(spec.name), spec.partitions)

    def publisher(self, *, connection: KafkaConnection | None = None, **config: Any) -> EventPublisher:
        merged = PublisherConfig.model_validate({**self.config.model_dump(), **config})
        return EventPublisher(connection=connection or self.connection, config=merged, transport=self.broker.producer())

    async def records(self, topic: str, count: int) -> list[RawRecord]:
        partitions = self.broker.topics.get(topic, [])
        found = [
            RawRecord(index, r.offset, r.key, r.value, list(r.headers))
            for index, log in enumerate(partitions)
            for r in log
        ]
        assert len(found) >= count, f"{topic}: {len(found)} records, expected at least {count}"
        return found

    async def partitions(self, topic: str) -> int:
        return len(self.broker.topics[topic])

    async def topic_exists(self, topic: str) -> bool:
        return topic in self.broker.topics

    def unapplied_connection(self) -> KafkaConnection:
        return KafkaConnection(topic_prefix="nowhere.")


@pytest.fixture
def harness() -> MemoryHarness:
    return MemoryHarness()


class TestPublisherOnMemoryBroker(PublisherContract):
    """The shared publisher contract, on the fake."""


# -- what only the fake can simulate -------------------------------------------------


async def test_unavailable_broker_fails_start_with_broker_unavailable_error() -> None:
    harness = MemoryHarness()
    harness.broker.available = False
    publisher = harness.publisher()
    with pytest.raises(BrokerUnavailableError):
        await publisher.start()
    with pytest.raises(BrokerUnavailableError):
        async with harness.publisher():
            pass


async def test_failed_send_surfaces_at_flush_with_its_event_id_and_publisher_goes_on() -> None:
    harness = MemoryHarness()
    topic = harness.connection.topic("session")
    async with harness.publisher() as publisher:
        harness.broker.available = False
        lost = await publisher.send(example_event("session:created", session_id="session-lost"))
        with pytest.raises(PublishFailedError) as info:
            await publisher.flush()
        assert [event_id for event_id, _ in info.value.failures] == [lost]
        assert isinstance(info.value.failures[0][1], BrokerUnavailableError)
        assert info.value.retriable
        assert str(lost) in str(info.value)
        assert publisher.pending == 0

        harness.broker.available = True
        kept = await publisher.send(example_event("session:created", session_id="session-kept"))
        await publisher.flush()  # the failure was reported once; nothing left to raise
        result = await publisher.publish(example_event("session:created", session_id="session-kept"))
    stored = await harness.records(topic, 2)
    assert [r.event_id for r in stored] == [kept, result.event_id]


async def test_failed_publish_raises_at_once_and_stores_nothing() -> None:
    harness = MemoryHarness()
    async with harness.publisher() as publisher:
        harness.broker.available = False
        with pytest.raises(BrokerUnavailableError):
            await publisher.publish(example_event("session:created"))
        harness.broker.available = True
    assert harness.broker.records(harness.connection.topic("session")) == []


# Signed murmur2 hashes from the Java client's UtilsTest.testMurmur2.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize("key", list(JAVA_MURMUR2))
def test_fake_partitioner_matches_the_java_client_and_aiokafka(key: bytes) -> None:
    unsigned = JAVA_MURMUR2[key] & 0xFFFFFFFF
    assert aiokafka_murmur2(key) & 0xFFFFFFFF == unsigned
    for partitions in (1, 3, 6, 7):
        assert murmur2_partition(key, partitions) == (unsigned & 0x7FFFFFFF) % partitions


def test_librdkafkas_murmur2_when_installed_puts_every_key_where_the_java_client_does() -> None:
    native = native_murmur2_partition()
    if native is None:
        pytest.skip("librdkafka is not installed (the confluent-kafka wheel brings it): pure-Python murmur2 in use")
    rng = random.Random(5)
    keys = [rng.randbytes(rng.randrange(0, 80)) for _ in range(2000)] + [str(uuid4()).encode() for _ in range(200)]
    keys += list(JAVA_MURMUR2)
    for partitions in (1, 2, 3, 6, 7, 64, 1000):
        assert [native(key, partitions) for key in keys] == [murmur2_partition(key, partitions) for key in keys]
    native_partitioner, python_partitioner = KeyPartitioner(), KeyPartitioner(native=False)
    assert native_partitioner.native
    assert not python_partitioner.native
    assert [native_partitioner.partition(k, 6) for k in keys] == [python_partitioner.partition(k, 6) for k in keys]


def test_native_murmur2_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTBUS_NATIVE_MURMUR2", "0")
    assert native_murmur2_partition() is None


def test_the_partitioner_memo_is_bounded_and_keeps_answering() -> None:
    partitioner = KeyPartitioner(max_keys=10, native=False)
    keys = [f"key-{i}".encode() for i in range(25)]
    assert [partitioner.partition(k, 7) for k in keys * 2] == [murmur2_partition(k, 7) for k in keys * 2]
    assert len(partitioner._memos[7]) <= 10
