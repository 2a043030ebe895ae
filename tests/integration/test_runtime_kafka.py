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
from uuid import uuid4

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from consumers import ConsumerTransport, KafkaConsumerTransport, TopicPartition
from infra._settings import Settings
from infra._topics import TOPIC_SPECS
from producers import (
    Delivery,
    EventPublisher,
    KafkaConnection,
    KafkaProducerTransport,
    OutgoingRecord,
    murmur2_partition,
)
from tests.runtime_contract import SESSION_PARTITIONS, RuntimeContract, keys_on_distinct_partitions, session, until

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


async def test_a_paused_partition_is_left_out_of_fetches_and_loses_nothing_on_resume(harness: KafkaHarness) -> None:
    """Invariant 7 at the transport: pausing leaves a partition out of fetches (its prefetched records are kept,
    not dropped and fetched again); resuming hands over its records from where it stopped, none missing; with
    every partition paused a fetch waits, and a resume ends the wait early."""
    keys = keys_on_distinct_partitions(2, "pause")
    await harness.publisher.publish_many([session(key, seq) for seq in range(30) for key in keys])
    topic = harness.connection.topic("session")
    assigned: set[TopicPartition] = set()

    async def on_assigned(tps: set[TopicPartition]) -> None:
        assigned.update(tps)

    async def on_revoked(tps: set[TopicPartition]) -> None:
        assigned.difference_update(tps)

    transport = harness.transport(f"pause-{uuid4().hex[:8]}")
    await transport.start([topic], on_assigned, on_revoked)
    try:
        seen: dict[int, list[int]] = {}
        held = TopicPartition(topic, murmur2_partition(keys[0].encode(), SESSION_PARTITIONS))
        await until(lambda: assigned, "the first assignment")
        transport.pause({held})
        deadline = time.monotonic() + _READ_DEADLINE_S
        while sum(map(len, seen.values())) < 30 and time.monotonic() < deadline:
            for tp, records in (await transport.fetch(0.2, 500)).items():
                seen.setdefault(tp.partition, []).extend(r.offset for r in records)
        assert held.partition not in seen, "a paused partition was fetched"
        assert sum(map(len, seen.values())) == 30

        transport.pause(set(assigned))
        started = time.monotonic()
        assert await transport.fetch(0.3, 500) == {}
        assert time.monotonic() - started >= 0.25  # waited for a resume, did not spin
        resume_soon = asyncio.get_running_loop().call_later(0.05, transport.resume, set(assigned))
        started = time.monotonic()
        await transport.fetch(5.0, 500)
        assert time.monotonic() - started < 2.0  # the resume ended the wait
        resume_soon.cancel()

        deadline = time.monotonic() + _READ_DEADLINE_S
        while len(seen.get(held.partition, [])) < 30 and time.monotonic() < deadline:
            for tp, records in (await transport.fetch(0.2, 500)).items():
                seen.setdefault(tp.partition, []).extend(r.offset for r in records)
        offsets = seen[held.partition]
        assert offsets == list(range(offsets[0], offsets[0] + 30)), "records lost or repeated across the pause"
    finally:
        await transport.stop()
