"""Transactional publishing and read_committed consuming, run unchanged on the fake and on Apache Kafka.

Not collected by itself: a module subclasses ``TransactionContract`` as ``Test...`` with a ``harness`` fixture.
The embedded Tansu broker refuses transactional producers (InitProducerId), so the real-broker variant runs on
Apache Kafka only (the ``kafka_container`` fixture), never skipped in CI.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import pytest

from consumers import ConsumerGroup, HandlerContext
from producers import EventPublisher, KafkaConnection, OutgoingRecord
from schemas import AvroCodec, ConfigurationError, Event, PublishFailedError, SessionCreated
from tests.runtime_contract import GroupRun, RuntimeHarness, new_group, session, until

__all__ = ["TransactionContract", "TransactionHarness"]

CODEC = AvroCodec()


class TransactionHarness(RuntimeHarness, Protocol):
    """A ``RuntimeHarness`` that also makes transactional publishers and aborts a transaction itself."""

    connection: KafkaConnection

    def transactional_publisher(self, transactional_id: str) -> EventPublisher:
        """A publisher (not started) with ``transactional_id`` on this harness's broker and topics."""
        ...

    async def abort_independently(self, records: list[OutgoingRecord]) -> None:
        """Write ``records`` in a transaction of a client that is not eventbus's, then abort it."""

    async def committed_event_ids(self, entity: str) -> list[str]:
        """Every event id a read_committed reader finds in the entity topic, read from the beginning."""
        ...


class TransactionContract:
    """What a transactional publisher and our read_committed consumers must do on every broker that can."""

    async def test_a_committed_transaction_is_read_and_an_aborted_one_never_is(
        self, harness: TransactionHarness
    ) -> None:
        kept = [session(f"kept-{n}") for n in range(5)]
        dropped = [session(f"dropped-{n}") for n in range(5)]
        async with harness.transactional_publisher(f"txn-{kept[0].event_id}") as publisher:
            async with publisher.transaction():
                for event in kept[:3]:
                    await publisher.send(event)
                for event in kept[3:]:
                    await publisher.publish(event)

            async def change_mind() -> None:
                async with publisher.transaction():
                    for event in dropped:
                        await publisher.send(event)
                    await publisher.flush()  # acknowledged by the broker, still never read
                    raise RuntimeError("changed my mind")

            with pytest.raises(RuntimeError, match="changed my mind"):
                await change_mind()
        ids = await harness.committed_event_ids("session")
        assert {str(e.event_id) for e in kept} <= set(ids)
        assert not {str(e.event_id) for e in dropped} & set(ids)

    async def test_a_group_never_handles_a_record_of_a_transaction_aborted_by_another_client(
        self, harness: TransactionHarness
    ) -> None:
        group: ConsumerGroup = new_group("txn")
        handled: list[str] = []

        @group.handler(SessionCreated)
        async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
            handled.append(event.session_id)

        aborted = [harness.publisher.prepare(session(f"aborted-{n}")) for n in range(4)]
        await harness.abort_independently(aborted)
        after: list[Event] = [session(f"after-{n}") for n in range(4)]
        await harness.publisher.publish_many(after)
        async with GroupRun(harness, group):
            await until(lambda: len(handled) >= len(after), "the committed records handled")
            await asyncio.sleep(0.5)  # a record of the aborted transaction would arrive with them
        assert sorted(handled) == [f"after-{n}" for n in range(4)]

    async def test_a_transactional_publisher_sends_only_inside_a_transaction(self, harness: TransactionHarness) -> None:
        event = session("outside")
        async with harness.transactional_publisher(f"txn-{event.event_id}") as publisher:
            with pytest.raises(PublishFailedError, match="only inside"):
                await publisher.send(event)
            with pytest.raises(PublishFailedError, match="only inside"):
                await publisher.publish(event)
            async with publisher.transaction():
                with pytest.raises(PublishFailedError, match="already open"):
                    async with publisher.transaction():
                        pass
        assert str(event.event_id) not in await harness.committed_event_ids("session")

    async def test_a_plain_publisher_has_no_transactions(self, harness: TransactionHarness) -> None:
        with pytest.raises(ConfigurationError, match="transactional_id"):
            async with harness.publisher.transaction():
                pass
