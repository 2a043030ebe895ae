"""The transaction contract on the in-memory fake broker (read_committed semantics in the fake)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from producers import EventPublisher, KafkaConnection, OutgoingRecord, PublisherConfig
from schemas import AvroCodec
from tests.events_factory import example_event
from tests.harness import new_broker
from tests.transaction_contract import TransactionContract
from tests.unit.test_runtime_memory import MemoryHarness


@dataclass
class MemoryTransactionHarness(MemoryHarness):
    """``TransactionHarness`` over an ``InMemoryBroker``."""

    def transactional_publisher(self, transactional_id: str) -> EventPublisher:
        config = PublisherConfig(service="txn-test", transactional_id=transactional_id)
        return EventPublisher(connection=self.connection, config=config, transport=self.broker.producer())

    async def abort_independently(self, records: list[OutgoingRecord]) -> None:
        transaction = self.broker.begin_transaction()
        for record in records:
            self.broker.append(record, transaction)
        self.broker.end_transaction(transaction, commit=False)

    async def committed_event_ids(self, entity: str) -> list[str]:
        codec = AvroCodec()
        return [str(codec.decode(r.value).event_id) for r in self.broker.records(self.connection.topic(entity))]


@pytest.fixture
async def harness() -> AsyncIterator[MemoryTransactionHarness]:
    connection = KafkaConnection(topic_prefix="mem.")
    broker = new_broker(topic_prefix=connection.topic_prefix)
    config = PublisherConfig(service="txn-test")
    async with EventPublisher(connection=connection, config=config, transport=broker.producer()) as publisher:
        yield MemoryTransactionHarness(broker, connection, publisher)


class TestTransactionsOnMemoryBroker(TransactionContract):
    """The shared transaction contract, on the fake."""


async def test_an_open_transaction_holds_back_later_records_of_its_partition() -> None:
    """The last stable offset: a read_committed reader stops at the first record of an open transaction."""
    broker = new_broker(partitions={"session": 1})
    codec = AvroCodec()
    async with (
        EventPublisher(config=PublisherConfig(transactional_id="holder"), transport=broker.producer()) as holder,
        EventPublisher(transport=broker.producer()) as plain,
    ):
        async with holder.transaction():
            pending = example_event("session:created")
            await holder.publish(pending)
            later = example_event("session:created")
            await plain.publish(later)
            assert broker.records("session") == []
        ids = [codec.decode(r.value).event_id for r in broker.records("session")]
        assert ids == [pending.event_id, later.event_id]
