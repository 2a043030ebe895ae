"""Background tasks beside the handlers (one that dies stops the group loudly), and the runtime's metrics."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from consumers import ConsumerGroup, GroupRunner, HandlerContext, RuntimeConfig, RuntimeMetrics
from consumers.testing import InMemoryConsumerTransport
from producers import EventPublisher
from schemas import SessionCreated
from schemas.errors import EventBusError, FatalHandlerError
from tests.events_factory import example_event
from tests.harness import new_broker


async def test_a_background_task_that_fails_stops_the_group_with_its_error() -> None:
    group = ConsumerGroup("background-fails")
    group.add(SessionCreated, lambda event, ctx: asyncio.sleep(0))

    @group.background
    async def worker(publisher: EventPublisher, stop: asyncio.Event) -> None:
        await asyncio.sleep(0.05)
        raise ValueError("the worker broke")

    broker = new_broker()
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

    broker = new_broker()
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


async def test_metrics_count_handled_failed_and_dead_lettered_records_on_a_scrape() -> None:
    group = ConsumerGroup("metrics-scrape")

    @group.handler(SessionCreated)
    async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
        if event.session_id == "bad":
            raise FatalHandlerError("refused")

    broker = new_broker()
    registry = CollectorRegistry()
    async with EventPublisher(transport=broker.producer()) as publisher:
        for session_id in ("ok-1", "ok-2", "bad"):
            await publisher.publish(example_event("session:created", session_id=session_id))
        runner = GroupRunner(
            group,
            transport=InMemoryConsumerTransport(broker, group.name),
            publisher=publisher,
            metrics=RuntimeMetrics(registry),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        deadline = asyncio.get_running_loop().time() + 5
        while len(broker.records("system")) < 1:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        stop.set()
        await task
    labels = {"group": "metrics-scrape", "event_type": "session:created"}
    assert registry.get_sample_value("eventbus_handled_total", labels) == 2
    assert registry.get_sample_value("eventbus_failed_total", labels) == 1
    assert registry.get_sample_value("eventbus_handler_seconds_count", labels) == 2
    assert registry.get_sample_value("eventbus_consumed_total", {"group": "metrics-scrape"}) == 3
    reason = {"group": "metrics-scrape", "reason": "failed"}
    assert registry.get_sample_value("eventbus_dead_lettered_total", reason) == 1
