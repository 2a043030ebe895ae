"""Helpers shared by the test modules: polling, the in-memory fake broker, databases, running a group.

Not collected by pytest (no ``test_`` prefix). The fixtures built on these (``broker``, ``publisher``,
``database_url``) are in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import typing
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import CollectorRegistry
from pydantic.fields import FieldInfo

from consumers import (
    PROCESSED_EVENTS_MIGRATION,
    ConsumerGroup,
    Database,
    GroupRunner,
    Migration,
    ProcessedEventStore,
    RuntimeConfig,
    RuntimeMetrics,
)
from consumers.testing import InMemoryBroker, InMemoryConsumerTransport
from infra._topics import TOPIC_SPECS
from producers import EventPublisher

POSTGRES_URL: Final = os.environ.get("EVENTBUS_TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")
"""The shared PostgreSQL test database (rows of other runs are there: tests isolate by unique ids).

``infra/dev/services.sh`` creates it; ``EVENTBUS_TEST_POSTGRES_URL`` points the suite elsewhere."""

REDIS_URL: Final = os.environ.get("EVENTBUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
"""The local Redis (``EVENTBUS_TEST_REDIS_URL`` points the suite elsewhere)."""

FAST: Final[Mapping[str, Any]] = {
    "backoff_initial_s": 0.01,
    "backoff_max_s": 0.05,
    "commit_interval_s": 0.05,
    "fetch_timeout_s": 0.05,
    "dead_letter_retry_s": 0.05,
}
"""``RuntimeConfig`` overrides for tests: short backoff, commit, fetch and dead-letter retry intervals."""


# -- polling --------------------------------------------------------------------------------------


async def until(
    check: Callable[[], object],
    what: str = "the condition",
    timeout_s: float = 20.0,
    *,
    interval_s: float = 0.02,
) -> None:
    """Poll ``check`` every ``interval_s`` until its result is truthy; fail naming ``what`` after ``timeout_s``.

    ``check`` may be sync or async (a result that is awaitable is awaited before it is judged).
    Raises ``AssertionError`` when the time is up.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(interval_s)


# -- the in-memory fake broker --------------------------------------------------------------------


def new_broker(*, topic_prefix: str = "", partitions: Mapping[str, int] | None = None) -> InMemoryBroker:
    """An ``InMemoryBroker`` with every ``TOPIC_SPECS`` topic, named ``topic_prefix`` + entity.

    ``partitions`` overrides the partition count of some entities (example: ``{"session": 1}``).
    """
    counts = partitions or {}
    broker = InMemoryBroker()
    for spec in TOPIC_SPECS:
        broker.create_topic(f"{topic_prefix}{spec.name}", counts.get(spec.name, spec.partitions))
    return broker


def drained(broker: InMemoryBroker, group: ConsumerGroup) -> bool:
    """Whether ``group`` committed past every record of its topics on ``broker``."""
    committed = broker.group_offsets.get(group.name, {})
    return all(
        committed.get((topic, index), 0) >= len(log)
        for topic in group.topics
        for index, log in enumerate(broker.topics[topic])
    )


# -- databases ------------------------------------------------------------------------------------


@asynccontextmanager
async def migrated_database(url: str, migrations: Iterable[Migration] = ()) -> AsyncIterator[Database]:
    """A ``Database`` at ``url`` with ``processed_events`` and ``migrations`` applied, for the block.

    The database is closed when the block ends (or when migrating fails).
    """
    database = Database(url)
    try:
        await database.migrate([PROCESSED_EVENTS_MIGRATION, *migrations])
        yield database
    finally:
        await database.close()


# -- running a group on the fake broker -----------------------------------------------------------


@dataclass(frozen=True)
class RunningGroup:
    """A group running in a task on the fake broker (what ``running_group`` yields)."""

    publisher: EventPublisher  # the runner's publisher (follow-ups, dead letters); tests may publish with it
    runner: GroupRunner
    task: asyncio.Task[None]


@asynccontextmanager
async def running_group(
    group: ConsumerGroup,
    broker: InMemoryBroker,
    config: RuntimeConfig,
    *,
    publisher: EventPublisher | None = None,
    store: ProcessedEventStore | None = None,
    assigned_timeout_s: float | None = None,
    stop_timeout_s: float | None = None,
) -> AsyncIterator[RunningGroup]:
    """Run ``group`` on ``broker`` in a task for the block, then stop it and wait for the task.

    Without ``publisher`` one is opened on ``broker`` for the block. With ``assigned_timeout_s`` the
    block starts once the runner has its assignment. ``stop_timeout_s`` bounds the wait for the
    stopped task (``None``: no bound); a runner that failed raises its error there.
    """
    async with AsyncExitStack() as stack:
        if publisher is None:
            publisher = await stack.enter_async_context(EventPublisher(transport=broker.producer()))
        runner = GroupRunner(
            group,
            transport=InMemoryConsumerTransport(broker, group.name),
            publisher=publisher,
            config=config,
            store=store,
            metrics=RuntimeMetrics(CollectorRegistry()),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        try:
            if assigned_timeout_s is not None:
                await asyncio.wait_for(runner.assigned.wait(), timeout=assigned_timeout_s)
            yield RunningGroup(publisher, runner, task)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=stop_timeout_s)


async def run_until_drained(
    group: ConsumerGroup,
    broker: InMemoryBroker,
    publisher: EventPublisher | None = None,
    *,
    store: ProcessedEventStore | None = None,
    config: RuntimeConfig | None = None,
    timeout_s: float = 20.0,
) -> None:
    """Run ``group`` on ``broker`` until every record of its topics is handled and committed, then stop it.

    ``config`` defaults to ``RuntimeConfig(**FAST)``; ``timeout_s`` bounds the wait for the commits
    (the stopped task gets 30 s more). A runner that fails ends the wait and raises its error.
    """
    async with running_group(
        group,
        broker,
        config or RuntimeConfig(**FAST),
        publisher=publisher,
        store=store,
        stop_timeout_s=30,
    ) as run:
        await until(lambda: drained(broker, group) or run.task.done(), "every record handled and committed", timeout_s)


# -- model introspection --------------------------------------------------------------------------


def unwrap_annotated(annotation: Any, metadata: list[Any]) -> tuple[Any, list[Any]]:
    """Strip ``Annotated`` layers, collecting their constraints (FieldInfo metadata flattened)."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation, *extra = typing.get_args(annotation)
        for item in extra:
            metadata = [*metadata, *(item.metadata if isinstance(item, FieldInfo) else [item])]
    return annotation, metadata
