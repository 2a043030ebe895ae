"""Background tasks of a group run beside its handlers; one that dies stops the group loudly."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from consumers import ConsumerGroup, GroupRunner, InMemoryConsumerTransport, RuntimeConfig, RuntimeMetrics
from infra._topics import TOPIC_SPECS
from producers import EventPublisher, InMemoryBroker
from schemas import SessionCreated
from schemas.errors import EventBusError


def _broker() -> InMemoryBroker:
    broker = InMemoryBroker()
    for spec in TOPIC_SPECS:
        broker.create_topic(spec.name, spec.partitions)
    return broker


async def test_a_background_task_that_fails_stops_the_group_with_its_error() -> None:
    group = ConsumerGroup("background-fails")
    group.add(SessionCreated, lambda event, ctx: asyncio.sleep(0))

    @group.background
    async def worker(publisher: EventPublisher, stop: asyncio.Event) -> None:
        await asyncio.sleep(0.05)
        raise ValueError("the worker broke")

    broker = _broker()
    async with EventPublisher(transport=broker.producer()) as publisher:
        runner = GroupRunner(
            group,
            transport=InMemoryConsumerTransport(broker, group.name),
            publisher=publisher,
            config=RuntimeConfig(shutdown_timeout_s=1),
            metrics=RuntimeMetrics(CollectorRegistry()),
        )
        with pytest.raises(EventBusError, match="the worker broke") as info:
            await asyncio.wait_for(runner.run(asyncio.Event()), timeout=5)
    assert isinstance(info.value.__cause__, ValueError)


async def test_background_tasks_get_the_stop_signal_at_shutdown() -> None:
    group = ConsumerGroup("background-stops")
    group.add(SessionCreated, lambda event, ctx: asyncio.sleep(0))
    stopped = asyncio.Event()

    @group.background
    async def worker(publisher: EventPublisher, stop: asyncio.Event) -> None:
        await stop.wait()
        stopped.set()

    broker = _broker()
    stop = asyncio.Event()
    async with EventPublisher(transport=broker.producer()) as publisher:
        runner = GroupRunner(
            group,
            transport=InMemoryConsumerTransport(broker, group.name),
            publisher=publisher,
            metrics=RuntimeMetrics(CollectorRegistry()),
        )
        task = asyncio.create_task(runner.run(stop))
        await asyncio.wait_for(runner.assigned.wait(), timeout=5)
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    assert stopped.is_set()
