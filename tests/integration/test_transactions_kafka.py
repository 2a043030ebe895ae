"""The transaction contract on Apache Kafka (in a container): the embedded broker refuses transactions.

An independent client (confluent-kafka's transactional producer) writes and aborts a transaction; the
read_committed readers are confluent-kafka consumers too, never the code under test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from infra._topics import TOPIC_SPECS, apply_topics
from producers import EventPublisher, KafkaProducerTransport, OutgoingRecord
from schemas import AvroCodec
from tests.conftest import KafkaTarget, make_settings
from tests.integration.test_runtime_kafka import KafkaHarness
from tests.transaction_contract import TransactionContract

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

PARTITIONS = {spec.name: spec.partitions for spec in TOPIC_SPECS}


@dataclass
class KafkaTransactionHarness(KafkaHarness):
    """``TransactionHarness`` over Apache Kafka."""

    def transactional_publisher(self, transactional_id: str) -> EventPublisher:
        config = self.settings.publisher_config("txn-test").model_copy(update={"transactional_id": transactional_id})
        return EventPublisher(connection=self.connection, config=config)

    async def abort_independently(self, records: list[OutgoingRecord]) -> None:
        def abort() -> None:
            producer = Producer(
                {
                    "bootstrap.servers": self.connection.bootstrap_servers,
                    "transactional.id": f"independent-{id(records)}",
                }
            )
            producer.init_transactions(30)
            producer.begin_transaction()
            for record in records:
                headers: list[tuple[str, str | bytes | None]] = list(record.headers)
                producer.produce(record.topic, record.value, key=record.key, headers=headers)
            producer.flush(30)
            producer.abort_transaction(30)

        await asyncio.to_thread(abort)

    async def committed_event_ids(self, entity: str) -> list[str]:
        topic = self.connection.topic(entity)

        def read() -> list[bytes]:
            consumer = Consumer(
                {
                    "bootstrap.servers": self.connection.bootstrap_servers,
                    "group.id": "unused",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                }
            )
            try:
                partitions = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS[entity])]
                consumer.assign(partitions)
                ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in partitions}
                values: list[bytes] = []
                for _ in range(200):
                    messages = consumer.consume(500, timeout=0.2)
                    values.extend(v for m in messages if m.error() is None and (v := m.value()) is not None)
                    positions = consumer.position([TopicPartition(topic, p) for p in ends])
                    # an empty partition has no position (OFFSET_INVALID) and nothing to wait for
                    if all(ends[tp.partition] == 0 or tp.offset >= ends[tp.partition] for tp in positions):
                        break
                return values
            finally:
                consumer.close()

        codec = AvroCodec()
        return [str(codec.decode(value).event_id) for value in await asyncio.to_thread(read)]


@pytest.fixture
async def harness(kafka_container: str) -> AsyncIterator[KafkaTransactionHarness]:
    settings = make_settings(KafkaTarget("kafka", kafka_container, "kafka"))
    await apply_topics(settings.connection(), replication_factor=settings.replication)
    connection = settings.connection()
    config = settings.publisher_config("txn-test")
    raw = KafkaProducerTransport(connection, config)
    admin = AIOKafkaAdminClient(**connection.client_options())
    async with EventPublisher(connection=connection, config=config) as publisher:
        await raw.start()
        await admin.start()
        try:
            yield KafkaTransactionHarness(settings, connection, publisher, raw, admin)
        finally:
            await admin.close()
            await raw.stop()


class TestTransactionsOnApacheKafka(TransactionContract):
    """The shared transaction contract, on Apache Kafka."""
