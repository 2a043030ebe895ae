"""The operator console's memory of the last hour: records per topic and lag per group, sampled in process.

Nothing needs an external store: one background task of the gateway samples the partition ends of the entity
topics and the committed offsets of the known groups every ``interval_s`` seconds and keeps the last
``window_s`` seconds of samples. Rates (events/s per topic) are the differences between successive samples.
A sample that fails (broker away) is skipped and logged; the next one is tried on time.

Example::

    sampler = LagSampler(connection, groups, interval_s=10)
    sampler.start()
    series = sampler.group_series("credits")   # [(unix seconds, total lag), ...]
    await sampler.aclose()
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from consumers import ConsumerGroup
from producers import KafkaConnection
from schemas.errors import EventBusError

from ._reader import partition_ends
from ._stats import collect_stats

__all__ = ["LagSampler", "Sample"]

log = logging.getLogger("eventbus.console")


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at the cluster: when (unix seconds), records per topic (high watermarks summed), lag per group."""

    at: float
    records: dict[str, int] = field(default_factory=dict)
    lag: dict[str, int] = field(default_factory=dict)
    partition_lag: dict[str, dict[str, int]] = field(default_factory=dict)


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

    @property
    def samples(self) -> list[Sample]:
        """The samples of the window, oldest first."""
        cutoff = time.time() - self.window_s
        return [sample for sample in self._samples if sample.at >= cutoff]

    def start(self) -> None:
        """Start sampling (again a no-op while running); the first sample is taken at once."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="eventbus:console-sampler")

    async def aclose(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

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
        )
        self._samples.append(sample)
        return sample

    async def _run(self) -> None:
        while True:
            began = time.monotonic()
            try:
                await self.sample_now()
            except EventBusError as exc:
                log.warning("console sample skipped: %s", exc.message)
            await asyncio.sleep(max(0.5, self.interval_s - (time.monotonic() - began)))

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

    def rate(self, topic: str) -> float | None:
        """The latest events/s into ``topic`` (None before two samples)."""
        series = self.rate_series(topic)
        return series[-1][1] if series else None
