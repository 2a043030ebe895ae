"""Running several consumer groups in one process against Kafka."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from producers import EventPublisher, KafkaConnection, PublisherConfig

from ._config import ConsumerConfig, RuntimeConfig
from ._group import ConsumerGroup
from ._kafka import KafkaConsumerTransport
from ._metrics import RuntimeMetrics
from ._runner import GroupRunner
from ._store import ProcessedEventStore

__all__ = ["group_id", "run_groups"]


def group_id(connection: KafkaConnection, group: ConsumerGroup) -> str:
    """The Kafka group id of ``group``: its name under the deployment's topic prefix."""
    return f"{connection.topic_prefix}{group.name}"


async def run_groups(
    groups: Sequence[ConsumerGroup],
    *,
    connection: KafkaConnection,
    publisher_config: PublisherConfig,
    consumer_config: ConsumerConfig,
    runtime_config: RuntimeConfig,
    stop: asyncio.Event,
    store: ProcessedEventStore | None = None,
    metrics: RuntimeMetrics | None = None,
    started: asyncio.Event | None = None,
) -> None:
    """Run ``groups`` (one Kafka consumer each, one shared publisher) until ``stop`` is set.

    Example: ``await run_groups([credits], connection=conn, ..., stop=stop_event)``
    """
    async with EventPublisher(connection=connection, config=publisher_config) as publisher:
        runners = [
            GroupRunner(
                group,
                transport=KafkaConsumerTransport(connection, consumer_config, group_id=group_id(connection, group)),
                publisher=publisher,
                config=runtime_config,
                store=store,
                metrics=metrics,
            )
            for group in groups
        ]
        tasks = [asyncio.create_task(runner.run(stop), name=f"group:{runner.group.name}") for runner in runners]
        watcher = asyncio.create_task(_signal_started(runners, started)) if started is not None else None
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a group that crashed stops the process with its error
        finally:
            stop.set()
            if watcher is not None:
                watcher.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _signal_started(runners: list[GroupRunner], started: asyncio.Event) -> None:
    for runner in runners:
        await runner.assigned.wait()
    started.set()
