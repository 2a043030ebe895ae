"""The declarative topic spec and applying it to a broker, idempotently."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from consumers import OUTBOX_PROGRESS_TOPIC
from producers import KafkaAdmin, KafkaConnection, kafka_admin
from schemas import CATALOG
from schemas.errors import BrokerTimeoutError, ConfigurationError

__all__ = [
    "INTERNAL_TOPICS",
    "REPLAY_LOG_TOPIC",
    "TOPIC_SPECS",
    "ApplyReport",
    "TopicInfo",
    "TopicSpec",
    "apply_topics",
    "describe_topics",
    "topic_drift",
]

_DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic as it should be. ``name`` is the entity; the prefix is added when applied."""

    name: str
    partitions: int
    retention_ms: int
    cleanup_policy: str = "delete"
    doc: str = ""

    def configs(self) -> dict[str, str]:
        """Topic-level configs to create the topic with."""
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy}


REPLAY_LOG_TOPIC = "system-replays"
"""The topic of ``eventbus dlq replay``'s marks (not a catalog topic: its records are JSON, not events)."""

TOPIC_SPECS: tuple[TopicSpec, ...] = (
    TopicSpec("session", 6, 7 * _DAY_MS, doc="session lifecycle, keyed by session id"),
    TopicSpec("coach", 3, 7 * _DAY_MS, doc="coach status, rating and profile, keyed by coach id"),
    TopicSpec("payment", 6, 30 * _DAY_MS, doc="payment requests and results, keyed by payment id"),
    TopicSpec("notification", 3, 7 * _DAY_MS, doc="notification requests and deliveries, keyed by user id"),
    TopicSpec("user", 3, 30 * _DAY_MS, doc="credit balance changes, keyed by user id"),
    TopicSpec("cache", 3, 1 * _DAY_MS, doc="cache invalidations, keyed by coach id"),
    TopicSpec("system", 3, 30 * _DAY_MS, doc="dead letters (system:error), keyed by consumer group"),
    # A mark is written after its dead letter and kept as long: it never expires before the dead letter does.
    TopicSpec(
        REPLAY_LOG_TOPIC,
        1,
        30 * _DAY_MS,
        cleanup_policy="compact,delete",
        doc="replay marks of dead letters (JSON), keyed by the dead letter's system-topic/partition/offset",
    ),
    # Only the last record per slot matters; compaction keeps this topic small forever.
    TopicSpec(
        OUTBOX_PROGRESS_TOPIC,
        1,
        30 * _DAY_MS,
        cleanup_policy="compact",
        doc="the exactly-once outbox relay's progress (JSON), keyed by relay slot",
    ),
)
"""The entity topics, one per catalog entity (a test keeps the two in step), and the internal topics."""

INTERNAL_TOPICS: tuple[str, ...] = (REPLAY_LOG_TOPIC, OUTBOX_PROGRESS_TOPIC)
"""Topics of eventbus's own bookkeeping (JSON records, no catalog events)."""

assert {spec.name for spec in TOPIC_SPECS} == {*CATALOG.topics, *INTERNAL_TOPICS}  # noqa: S101 - import-time invariant


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """A topic as the broker describes it."""

    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON shape for ``eventbus topics list --json``."""
        return {
            "name": self.name,
            "partitions": self.partitions,
            "replication_factor": self.replication_factor,
            "configs": self.configs,
        }


@dataclass
class ApplyReport:
    """What ``apply_topics`` did: created, already there, or there but different (drift)."""

    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)


def topic_drift(spec: TopicSpec, info: TopicInfo, *, name: str, replication_factor: int) -> list[str]:
    """How an existing topic differs from its spec: partitions, replication factor, the spec's configs.

    Only the configs the spec sets are compared (a broker reports many more);
    a config the broker did not describe is not reported.
    Example: ``topic_drift(spec, info, name="session", replication_factor=3)``
    """
    drift = []
    if info.partitions != spec.partitions:
        drift.append(f"{name}: {info.partitions} partitions, spec says {spec.partitions}")
    if info.replication_factor != replication_factor:
        drift.append(f"{name}: replication factor {info.replication_factor}, settings say {replication_factor}")
    for key, wanted in spec.configs().items():
        actual = info.configs.get(key)
        if actual is not None and actual != wanted:
            drift.append(f"{name}: {key}={actual}, spec says {wanted}")
    return drift


async def apply_topics(
    connection: KafkaConnection, *, replication_factor: int, specs: tuple[TopicSpec, ...] = TOPIC_SPECS
) -> ApplyReport:
    """Create the missing topics; report existing ones that differ from the spec (drift).

    Idempotent: applying twice creates nothing the second time. Existing topics
    are never changed (more partitions would move keys between partitions);
    partitions, replication factor and the spec's configs are compared.
    ``ConfigurationError`` before anything is created when ``replication_factor``
    is larger than the number of brokers (some brokers would accept it and
    under-replicate silently).
    Example: ``await apply_topics(settings.connection(), replication_factor=1)``
    """
    report = ApplyReport()
    async with kafka_admin(connection, "applying topics") as admin:
        brokers = await admin.broker_count()
        if replication_factor > brokers:
            msg = (
                f"replication factor {replication_factor} is larger than the {brokers} broker(s) at "
                f"{connection.bootstrap_servers}: set EVENTBUS_REPLICATION_FACTOR={max(brokers, 1)}, "
                "or EVENTBUS_PROFILE=embedded for the embedded broker"
            )
            raise ConfigurationError(msg)
        names = {connection.topic(spec.name) for spec in specs}
        existing = {info.name: info for info in await _describe(admin, configs_of=names)}
        missing: list[TopicSpec] = []
        for spec in specs:
            name = connection.topic(spec.name)
            info = existing.get(name)
            if info is None:
                missing.append(spec)
            elif drift := topic_drift(spec, info, name=name, replication_factor=replication_factor):
                report.drift += drift
            else:
                report.existing.append(name)
        for spec in missing:
            name = connection.topic(spec.name)
            created = await admin.create_topic(
                name, partitions=spec.partitions, replication=replication_factor, configs=spec.configs()
            )
            (report.created if created else report.existing).append(name)  # existing: created meanwhile elsewhere
        if report.created:
            await _until_listed(admin, set(report.created), connection.request_timeout_s)
    return report


async def _until_listed(admin: KafkaAdmin, names: set[str], timeout_s: float) -> None:
    """Wait until the broker lists the topics just created: Apache Kafka acknowledges a creation before every
    broker's metadata has it, and a client that looks the topic up at once would be told it does not exist."""
    deadline = time.monotonic() + timeout_s
    while missing := names - await admin.topic_names():
        if time.monotonic() > deadline:
            msg = f"topics created but not listed by the broker within {timeout_s:g} s: {sorted(missing)}"
            raise BrokerTimeoutError(msg)
        await asyncio.sleep(0.1)


async def describe_topics(connection: KafkaConnection, *, all_topics: bool = False) -> list[TopicInfo]:
    """The topics on the broker: the spec's (under the prefix, with their configs), or every one.

    Example: ``[info.name for info in await describe_topics(settings.connection())]``
    """
    async with kafka_admin(connection, "describing topics") as admin:
        wanted = {connection.topic(spec.name) for spec in TOPIC_SPECS}
        infos = await _describe(admin, configs_of=wanted)
    if not all_topics:
        infos = [info for info in infos if info.name in wanted]
    return sorted(infos, key=lambda info: info.name)


async def _describe(admin: KafkaAdmin, *, configs_of: set[str] | None = None) -> list[TopicInfo]:
    """Every topic's partitions and replication factor; the configs too of those in ``configs_of``."""
    names = sorted(await admin.topic_names())
    described = await admin.describe_topics(names)
    configs = await admin.topic_configs(sorted(set(names) & (configs_of or set())))
    return [
        TopicInfo(topic.name, len(topic.partitions), topic.replication_factor, configs.get(topic.name, {}))
        for topic in described
    ]
