"""``getStats()`` for the distributed bus: events by type, subscriptions, and per-group lag."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from consumers import ConsumerGroup, group_id
from producers import KafkaConnection, kafka_admin

from ._reader import count_event_types, partition_ends

__all__ = ["BusStats", "GroupLag", "PartitionLag", "collect_stats"]


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition as a group sees it. ``lag`` is never negative."""

    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int


@dataclass
class GroupLag:
    """A group's handled types and its position on each partition of its topics."""

    group: str
    event_types: list[str]
    partitions: list[PartitionLag] = field(default_factory=list)

    @property
    def lag(self) -> int:
        """Records not yet committed, over all partitions."""
        return sum(p.lag for p in self.partitions)


@dataclass
class BusStats:
    """The original ``getStats()`` (total events, subscription count, events by type) plus lag."""

    total_events: int
    subscription_count: int
    events_by_type: dict[str, int]
    groups: list[GroupLag]

    def as_dict(self) -> dict[str, Any]:
        """JSON shape of ``eventbus stats --json``."""
        return {
            "totalEvents": self.total_events,
            "subscriptionCount": self.subscription_count,
            "eventsByType": self.events_by_type,
            "groups": [
                {
                    "group": g.group,
                    "event_types": g.event_types,
                    "lag": g.lag,
                    "partitions": [
                        {
                            "topic": p.topic,
                            "partition": p.partition,
                            "committed": p.committed,
                            "end": p.end,
                            "lag": p.lag,
                        }
                        for p in g.partitions
                    ],
                }
                for g in self.groups
            ],
        }


async def _committed(
    connection: KafkaConnection, group: str, partitions: list[tuple[str, int]]
) -> dict[tuple[str, int], int | None]:
    async with kafka_admin(connection, f"reading the offsets of group {group}") as admin:
        offsets = await admin.committed_offsets(group, partitions)
    return {tp: offsets.get(tp) for tp in partitions}


async def collect_stats(
    connection: KafkaConnection, groups: Sequence[ConsumerGroup], *, count_types: bool = True
) -> BusStats:
    """Totals from the high watermarks seen in fetches, types from headers, lag per group and partition.

    Example: ``(await collect_stats(conn, [credits])).groups[0].lag``
    """
    ends = await partition_ends(connection)
    total = sum(high - low for low, high in ends.values())
    by_type = dict(sorted((await count_event_types(connection)).items())) if count_types else {}
    lags = []
    for group in groups:
        topics = {connection.topic(topic) for topic in group.topics}
        tps = sorted(tp for tp in ends if tp.topic in topics)
        committed = await _committed(connection, group_id(connection, group), [(tp.topic, tp.partition) for tp in tps])
        entry = GroupLag(group.name, list(group.event_types))
        for tp in tps:
            low, high = ends[tp]
            offset = committed.get((tp.topic, tp.partition))
            start = low if offset is None else offset
            entry.partitions.append(PartitionLag(tp.topic, tp.partition, offset, high, max(0, high - start)))
        lags.append(entry)
    return BusStats(
        total_events=total,
        subscription_count=sum(len(group.event_types) for group in groups),
        events_by_type=by_type,
        groups=lags,
    )
