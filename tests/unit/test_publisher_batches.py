"""Awaited publishes on the Kafka transport's batching path, over a fake aiokafka producer (no broker).

The fake acknowledges each shipped batch with a base offset per partition, or refuses the batches of one
partition: each caller's future gets exactly its own position or the error of its own batch.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, NotLeaderForPartitionError
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import RecordMetadata, TopicPartition

from producers import EventPublisher, KafkaConnection, KafkaProducerTransport, PublisherConfig
from producers._partitioner import KeyPartitioner
from schemas import Event
from schemas.errors import PublishFailedError, PublishTimeoutError
from tests.events_factory import example_event
from tests.harness import until


class FakeProducer:
    """Just what the transport calls of aiokafka's producer: batches in, acknowledgements out."""

    def __init__(self, *, failing_partition: int | None = None, partitions: int = 3, busy: int = 0) -> None:
        self.failing_partition = failing_partition
        self.busy = busy  # this many send_batch calls time out first, as aiokafka's when a batch waits to drain
        self.partitions = partitions
        self.hold: asyncio.Event | None = None  # while set and not released, a batch waits: the previous one drains
        self.silent = False  # batches are taken and never acknowledged (a broker that stopped answering)
        self.next_offset: dict[int, int] = {}
        self.shipped: list[tuple[int, int]] = []  # (partition, records)
        self.shipped_at: list[float] = []  # the loop's time of each shipment above
        self.unanswered: list[asyncio.Future[Any]] = []

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(batch_size=16_384, compression_type=0)

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    async def send_batch(self, builder: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        if self.busy:
            self.busy -= 1
            raise KafkaTimeoutError
        if self.hold is not None:
            await self.hold.wait()
        count = builder.record_count()
        self.shipped.append((partition, count))
        self.shipped_at.append(asyncio.get_running_loop().time())
        acked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.unanswered.append(acked)
        if self.silent:
            return acked
        if partition == self.failing_partition:
            acked.set_exception(NotLeaderForPartitionError())
        else:
            base = self.next_offset.get(partition, 0)
            self.next_offset[partition] = base + count
            acked.set_result(RecordMetadata(topic, partition, TopicPartition(topic, partition), base, -1, 0, 0))
        return acked

    async def flush(self) -> None:
        return None

    async def stop(self) -> None:
        return None


async def publisher_on(fake: FakeProducer, **config_fields: Any) -> EventPublisher:
    connection = KafkaConnection()
    config = PublisherConfig(**{"enable_idempotence": False, "linger_ms": 50} | config_fields)
    transport = KafkaProducerTransport(connection, config)
    transport._producer = fake  # the seam under test: no broker
    publisher = EventPublisher(connection=connection, config=config, transport=transport)
    publisher._started = publisher._sendable = True  # started without a broker
    publisher._known_topics = {"session"}
    return publisher


def bookings(count: int) -> list[Event]:
    return [example_event("session:created", session_id=f"s-{n}") for n in range(count)]


async def test_concurrent_awaited_publishes_share_one_batch_per_partition_and_get_their_own_offsets() -> None:
    fake = FakeProducer()
    publisher = await publisher_on(fake)
    events = bookings(60)

    results = await asyncio.gather(*(publisher.publish(event) for event in events))

    assert len(fake.shipped) == len({partition for partition, _ in fake.shipped}), "one batch per partition"
    by_partition: dict[int, list[int]] = {}
    for result in results:
        by_partition.setdefault(result.partition, []).append(result.offset)
    for partition, offsets in by_partition.items():
        assert sorted(offsets) == list(range(fake.next_offset[partition]))
    assert [r.event_id for r in results] == [e.event_id for e in events]


async def test_a_lone_publish_does_not_wait_for_the_linger() -> None:
    publisher = await publisher_on(FakeProducer())
    started = asyncio.get_running_loop().time()
    await publisher.publish(bookings(1)[0])
    assert asyncio.get_running_loop().time() - started < 0.04, "shipped on the next turn, not after 50 ms"


async def test_each_partition_lingers_from_its_own_first_record_not_on_a_publisher_wide_beat() -> None:
    """As the Java client lingers per batch: a partition's records wait for more to join them up to ``linger_ms``
    after the partition's first one, and a partition that starts later is not shipped early with the others."""
    fake = FakeProducer(partitions=2)
    publisher = await publisher_on(fake, linger_ms=200)
    partitioner = KeyPartitioner()
    by_partition: dict[int, list[Event]] = {0: [], 1: []}
    for event in bookings(40):
        by_partition[partitioner.partition(publisher.prepare(event).key or b"", 2)].append(event)
    loop = asyncio.get_running_loop()

    await publisher.send(by_partition[0][0])
    await asyncio.sleep(0.1)
    await publisher.send(by_partition[0][1])
    second_started = loop.time()
    await publisher.send(by_partition[1][0])
    await until(lambda: len(fake.shipped) == 2, "both partitions shipped")

    assert fake.shipped == [(0, 2), (1, 1)], "partition 0 first, with both its records"
    # timers never fire early (the loop can only make them late): partition 1 waited its own full linger
    assert fake.shipped_at[1] - second_started >= 0.19


async def test_a_refused_batch_fails_only_the_callers_whose_records_it_held() -> None:
    fake = FakeProducer(failing_partition=1)
    publisher = await publisher_on(fake)
    events = bookings(60)

    outcomes = await asyncio.gather(*(publisher.publish(event) for event in events), return_exceptions=True)

    failed = [o for o in outcomes if isinstance(o, BaseException)]
    succeeded = [o for o in outcomes if not isinstance(o, BaseException)]
    assert failed
    assert succeeded
    assert all(isinstance(error, PublishFailedError) for error in failed)
    assert all(result.partition != 1 for result in succeeded)
    refused = sum(count for partition, count in fake.shipped if partition == 1)
    assert len(failed) == refused
    assert publisher.pending == 0


@pytest.mark.parametrize("first", ["send", "publish"])
async def test_publish_and_send_of_one_task_keep_their_order_in_the_partition(first: str) -> None:
    fake = FakeProducer(partitions=1)
    publisher = await publisher_on(fake)
    a, b = bookings(2)
    if first == "send":
        await publisher.send(a)
        result = await publisher.publish(b)
        assert result.offset == 1
    else:
        result = await publisher.publish(a)
        await publisher.send(b)
        await publisher.flush()
        assert result.offset == 0
    assert fake.next_offset[0] == 2


async def test_a_batch_that_waits_for_the_partition_to_drain_is_offered_again_not_failed() -> None:
    fake = FakeProducer(busy=2)
    publisher = await publisher_on(fake)
    results = await asyncio.gather(*(publisher.publish(event) for event in bookings(9)))
    assert len(results) == 9
    assert sum(count for _, count in fake.shipped) == 9


async def test_records_published_while_the_partition_drains_leave_as_one_batch_not_many_small_ones() -> None:
    """aiokafka takes a partition's next batch only once the previous one is in a request; what callers publish
    on several turns meanwhile gathers in the open batch, and every caller still gets its exact offset."""
    fake = FakeProducer(partitions=1)
    publisher = await publisher_on(fake)
    events = bookings(13)
    first = await asyncio.gather(*(publisher.publish(event) for event in events[:4]))
    fake.hold = asyncio.Event()
    blocked = [asyncio.create_task(publisher.publish(event)) for event in events[4:7]]
    later: list[asyncio.Task[Any]] = []
    for wave in (events[7:10], events[10:13]):  # two more turns while the batch of 3 waits
        for _ in range(3):
            await asyncio.sleep(0)
        later += [asyncio.create_task(publisher.publish(event)) for event in wave]
    for _ in range(3):
        await asyncio.sleep(0)
    fake.hold.set()
    results = [*first, *await asyncio.gather(*blocked, *later)]

    assert fake.shipped == [(0, 4), (0, 3), (0, 6)]
    assert [result.offset for result in results] == list(range(13))
    assert publisher.pending == 0


async def test_an_unanswered_batch_fails_its_callers_with_a_timeout_once_and_a_late_ack_changes_nothing() -> None:
    """No timer per call: the batch's own deadline (the delivery timeout) fails every record in it, awaited and
    fire-and-forget alike, each once; an acknowledgement arriving after that is ignored."""
    fake = FakeProducer(partitions=1)
    fake.silent = True
    publisher = await publisher_on(fake, delivery_timeout_s=0.3)
    events = bookings(4)
    await publisher.send(events[0])
    outcomes = await asyncio.gather(*(publisher.publish(event) for event in events[1:]), return_exceptions=True)

    assert all(isinstance(outcome, PublishTimeoutError) for outcome in outcomes)
    assert str(events[1].event_id) in str(outcomes[0])
    await asyncio.sleep(0.1)
    assert publisher.pending == 0
    for late in fake.unanswered:
        late.set_result(RecordMetadata("session", 0, TopicPartition("session", 0), 0, -1, 0, 0))
    await asyncio.sleep(0)
    assert publisher.pending == 0
    with pytest.raises(PublishFailedError) as failed:
        await publisher.flush()
    assert [event_id for event_id, _ in failed.value.failures] == [events[0].event_id]


async def test_publish_many_with_a_refused_batch_raises_its_error_and_settles_every_record() -> None:
    fake = FakeProducer(failing_partition=1)
    publisher = await publisher_on(fake)
    with pytest.raises(PublishFailedError):
        await publisher.publish_many(bookings(30))
    await asyncio.sleep(0)
    assert publisher.pending == 0
    assert sum(count for _, count in fake.shipped) == 30
