"""The consumer runtime contract on real Kafka-protocol brokers (embedded Tansu; Apache Kafka where Docker runs).

The runner consumes with ``KafkaConsumerTransport`` and publishes with the SDK; committed offsets are read
with an admin client (always with ``partitions=``: the embedded broker drops the connection otherwise) and
records with a separate aiokafka consumer assigned to every partition, never through the member under test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from consumers import ConsumerTransport, KafkaConsumerTransport, TopicPartition
from infra._settings import Settings
from infra._topics import TOPIC_SPECS
from producers import Delivery, EventPublisher, KafkaConnection, KafkaProducerTransport, OutgoingRecord
from tests.runtime_contract import RuntimeContract

pytestmark = pytest.mark.integration

PARTITIONS = {spec.name: spec.partitions for spec in TOPIC_SPECS}
_READ_DEADLINE_S = 20.0


@dataclass
class KafkaHarness:
    """``RuntimeHarness`` over a broker: the topics of this test's prefix, one publisher, an admin client."""

    settings: Settings
    connection: KafkaConnection
    publisher: EventPublisher
    raw: KafkaProducerTransport
    admin: AIOKafkaAdminClient

    def transport(self, group_id: str) -> ConsumerTransport:
        return KafkaConsumerTransport(self.connection, self.settings.consumer_config(), group_id=group_id)

    async def publish_raw(self, record: OutgoingRecord) -> Delivery:
        return await (await self.raw.enqueue(record))

    async def committed(self, group_id: str, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        wanted = list(partitions)
        asked = [KafkaTopicPartition(tp.topic, tp.partition) for tp in wanted]
        found = await asyncio.wait_for(self.admin.list_consumer_group_offsets(group_id, partitions=asked), 10)
        offsets = {TopicPartition(tp.topic, tp.partition): meta.offset for tp, meta in found.items()}
        return {tp: offsets[tp] if offsets.get(tp, -1) >= 0 else None for tp in wanted}

    async def values(self, entity: str, count: int) -> list[bytes]:
        """Read the topic from the beginning until ``count`` records are there and a fetch comes back empty."""
        topic = self.connection.topic(entity)
        consumer = AIOKafkaConsumer(**self.connection.client_options(), enable_auto_commit=False)
        await consumer.start()
        values: list[bytes] = []
        try:
            partitions = [KafkaTopicPartition(topic, p) for p in range(PARTITIONS[entity])]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            deadline = time.monotonic() + _READ_DEADLINE_S
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=300)
                values.extend(record.value for records in batch.values() for record in records)
                if not batch and len(values) >= count:
                    break
        finally:
            await consumer.stop()
        assert len(values) >= count, f"{topic}: {len(values)} records, expected at least {count}"
        return values


@pytest.fixture
async def harness(settings: Settings) -> AsyncIterator[KafkaHarness]:
    connection = settings.connection()
    config = settings.publisher_config("runtime-test")
    raw = KafkaProducerTransport(connection, config)
    admin = AIOKafkaAdminClient(**connection.client_options())
    async with EventPublisher(connection=connection, config=config) as publisher:
        await raw.start()
        try:
            await admin.start()
            try:
                yield KafkaHarness(settings, connection, publisher, raw, admin)
            finally:
                await admin.close()
        finally:
            await raw.stop()


class TestRuntimeOnKafka(RuntimeContract):
    """The shared runtime contract, on a real broker."""
