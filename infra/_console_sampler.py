"""The operator console's memory of the last hour: records per topic, lag and throughput per group, sampled in process.

Nothing needs an external store: one background task of the gateway samples the partition ends of the entity
topics and of the groups' retry tiers, and the committed offsets of the known groups, every ``interval_s``
seconds, and keeps the last ``window_s`` seconds of samples. Rates are the differences between successive
samples: events/s into a topic; a group's handled/s (its committed offsets moving on its own topics: every
record it is done with, whether handled, skipped or dead-lettered) and retried/s (records it moved into its
retry tiers). A sample that fails (broker away) is skipped and logged; the next one is tried on time.

Example::

    sampler = LagSampler(connection, groups, interval_s=10)
    sampler.start()
    series = sampler.group_series("credits")   # [(unix seconds, total lag), ...]
    handled = sampler.handled_series("credits")   # [(unix seconds, records/s), ...]
    await sampler.aclose()
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from consumers import ConsumerGroup
from producers import KafkaConnection
from schemas.errors import EventBusError

from ._reader import existing_topics, partition_ends
from ._stats import collect_stats

__all__ = ["LagSampler", "Sample", "retry_tiers_of"]

log = logging.getLogger("eventbus.console")


def retry_tiers_of(connection: KafkaConnection, group: str, names: Iterable[str]) -> list[str]:
    """The retry tiers of ``group`` among the topic ``names`` (``retry.<group>.<n>``, prefixed), by tier."""
    prefix = connection.topic(f"retry.{group}.")
    tiers = [name for name in names if name.startswith(prefix) and name[len(prefix) :].isdigit()]
    return sorted(tiers, key=lambda name: int(name[len(prefix) :]))


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at the cluster: when (unix seconds), records per topic (high watermarks summed), lag per group,
    and per group its committed offsets and its retry tiers' ends (by ``topic/partition``)."""

    at: float
    records: dict[str, int] = field(default_factory=dict)
    lag: dict[str, int] = field(default_factory=dict)
    partition_lag: dict[str, dict[str, int]] = field(default_factory=dict)
    committed: dict[str, dict[str, int]] = field(default_factory=dict)
    retry_ends: dict[str, dict[str, int]] = field(default_factory=dict)


class LagSampler:
    """Samples records and lag every ``interval_s`` for the last ``window_s`` (in memory, this process only).

    Example: ``LagSampler(conn, groups).start()``
    """

    def __init__(
        self,
        connection: KafkaConnection,
        groups: Sequence[ConsumerGroup],
        *,
        interval_s: float = 10.0,
        window_s: float = 3600.0,
    ) -> None:
        self._connection = connection
        self._groups = list(groups)
        self.interval_s = interval_s
        self.window_s = window_s
        self._samples: deque[Sample] = deque(maxlen=max(2, int(window_s / interval_s) + 1))
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def samples(self) -> list[Sample]:
        """The samples of the window, oldest first."""
        cutoff = time.time() - self.window_s
        return [sample for sample in self._samples if sample.at >= cutoff]

    def start(self) -> None:
        """Start sampling (again a no-op while running); the first sample is taken at once."""
        if self._task is None or self._task.done():
            self._stopping = asyncio.Event()
            self._task = asyncio.create_task(self._run(self._stopping), name="eventbus:console-sampler")

    async def aclose(self) -> None:
        """Stop sampling: the sample in progress is let finish (its clients closed), cancelled only if it hangs.

        Cancelling a client while it connects can leave a connection no one closes."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=2 * self._connection.request_timeout_s)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def sample_now(self) -> Sample:
        """Take one sample and keep it."""
        stats = await collect_stats(self._connection, self._groups, count_types=False)
        ends = await partition_ends(self._connection)
        records: dict[str, int] = {}
        for tp, (_, high) in ends.items():
            records[tp.topic] = records.get(tp.topic, 0) + high
        sample = Sample(
            at=time.time(),
            records=records,
            lag={group.group: group.lag for group in stats.groups},
            partition_lag={
                group.group: {f"{p.topic}/{p.partition}": p.lag for p in group.partitions} for group in stats.groups
            },
            # where the group stands: its committed offset, or where it starts (the first offset) before any commit
            committed={
                group.group: {f"{p.topic}/{p.partition}": p.end - p.lag for p in group.partitions}
                for group in stats.groups
            },
            retry_ends=await self._retry_ends(),
        )
        self._samples.append(sample)
        return sample

    async def _retry_ends(self) -> dict[str, dict[str, int]]:
        """Per group, the high watermark of each partition of its retry tiers (``retry.<group>.<n>``)."""
        names = await existing_topics(self._connection)
        owner = {
            tier: group.name for group in self._groups for tier in retry_tiers_of(self._connection, group.name, names)
        }
        out: dict[str, dict[str, int]] = {group.name: {} for group in self._groups}
        if not owner:
            return out
        for tp, (_, high) in (await partition_ends(self._connection, topics=sorted(owner))).items():
            out[owner[tp.topic]][f"{tp.topic}/{tp.partition}"] = high
        return out

    async def _run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            began = time.monotonic()
            try:
                await self.sample_now()
            except EventBusError as exc:
                log.warning("console sample skipped: %s", exc.message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), max(0.5, self.interval_s - (time.monotonic() - began)))

    def group_series(self, group: str) -> list[tuple[float, int]]:
        """(unix seconds, total lag) of ``group`` over the window."""
        return [(sample.at, sample.lag[group]) for sample in self.samples if group in sample.lag]

    def rate_series(self, topic: str) -> list[tuple[float, float]]:
        """(unix seconds, events/s into ``topic`` since the sample before) over the window."""
        samples = self.samples
        out: list[tuple[float, float]] = []
        for before, after in itertools.pairwise(samples):
            if topic in before.records and topic in after.records and after.at > before.at:
                delta = max(0, after.records[topic] - before.records[topic])
                out.append((after.at, delta / (after.at - before.at)))
        return out

    def handled_series(self, group: str) -> list[tuple[float, float]]:
        """(unix seconds, records/s ``group`` was done with since the sample before): its committed offsets' pace."""
        return self._pace(lambda sample: sample.committed.get(group))

    def retried_series(self, group: str) -> list[tuple[float, float]]:
        """(unix seconds, records/s ``group`` moved into its retry tiers since the sample before)."""
        return self._pace(lambda sample: sample.retry_ends.get(group))

    def _pace(self, positions: Callable[[Sample], dict[str, int] | None]) -> list[tuple[float, float]]:
        """How fast the positions moved between successive samples (partitions present in both; never negative)."""
        out: list[tuple[float, float]] = []
        for before, after in itertools.pairwise(self.samples):
            old, new = positions(before), positions(after)
            if old is None or new is None or after.at <= before.at:
                continue
            moved = sum(max(0, new[key] - old[key]) for key in new.keys() & old.keys())
            out.append((after.at, moved / (after.at - before.at)))
        return out

    def spread(self, times: Iterable[float]) -> list[tuple[float, float]]:
        """(unix seconds, occurrences/s between the sample before and this one) of events that happened at ``times``."""
        stamps = sorted(times)
        out: list[tuple[float, float]] = []
        for before, after in itertools.pairwise(self.samples):
            if after.at > before.at:
                inside = bisect.bisect_right(stamps, after.at) - bisect.bisect_right(stamps, before.at)
                out.append((after.at, inside / (after.at - before.at)))
        return out

    def rate(self, topic: str) -> float | None:
        """The latest events/s into ``topic`` (None before two samples)."""
        series = self.rate_series(topic)
        return series[-1][1] if series else None
