"""The declarative topic spec and applying it to a broker, idempotently."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from producers import KafkaConnection, connect_with_retry, convert_kafka_error
from schemas import CATALOG

__all__ = ["TOPIC_SPECS", "ApplyReport", "TopicInfo", "TopicSpec", "apply_topics", "describe_topics"]

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


TOPIC_SPECS: tuple[TopicSpec, ...] = (
    TopicSpec("session", 6, 7 * _DAY_MS, doc="session lifecycle, keyed by session id"),
    TopicSpec("coach", 3, 7 * _DAY_MS, doc="coach status, rating and profile, keyed by coach id"),
    TopicSpec("payment", 6, 30 * _DAY_MS, doc="payment requests and results, keyed by payment id"),
    TopicSpec("notification", 3, 7 * _DAY_MS, doc="notification requests and deliveries, keyed by user id"),
    TopicSpec("user", 3, 30 * _DAY_MS, doc="credit balance changes, keyed by user id"),
    TopicSpec("cache", 3, 1 * _DAY_MS, doc="cache invalidations, keyed by coach id"),
    TopicSpec("system", 3, 30 * _DAY_MS, doc="dead letters (system:error), keyed by consumer group"),
)
"""The entity topics; one per catalog entity (a test keeps the two in step)."""

assert {spec.name for spec in TOPIC_SPECS} == set(CATALOG.topics)  # noqa: S101 - import-time invariant


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


async def _admin(connection: KafkaConnection) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(**connection.client_options())
    try:
        await connect_with_retry(admin.start, connection, "admin")
    except BaseException:
        await admin.close()
        raise
    return admin


async def apply_topics(
    connection: KafkaConnection, *, replication_factor: int, specs: tuple[TopicSpec, ...] = TOPIC_SPECS
) -> ApplyReport:
    """Create the missing topics; report existing ones whose partition count differs.

    Idempotent: applying twice creates nothing the second time. Partitions are
    never changed on an existing topic (that would move keys between partitions).
    Example: ``await apply_topics(settings.connection(), replication_factor=1)``
    """
    report = ApplyReport()
    admin = await _admin(connection)
    timeout = connection.request_timeout_s
    try:
        existing = {info.name: info for info in await _describe(admin, timeout)}
        missing = []
        for spec in specs:
            name = connection.topic(spec.name)
            info = existing.get(name)
            if info is None:
                missing.append(NewTopic(name, spec.partitions, replication_factor, topic_configs=spec.configs()))
            elif info.partitions != spec.partitions:
                report.drift.append(f"{name}: {info.partitions} partitions, spec says {spec.partitions}")
            else:
                report.existing.append(name)
        for topic in missing:
            try:
                await asyncio.wait_for(admin.create_topics([topic]), timeout=timeout)
            except TopicAlreadyExistsError:  # created meanwhile by another process
                report.existing.append(topic.name)
            else:
                report.created.append(topic.name)
    except (TimeoutError, KafkaError) as exc:
        raise convert_kafka_error(exc, "applying topics") from exc
    finally:
        await admin.close()
    return report


async def describe_topics(connection: KafkaConnection, *, all_topics: bool = False) -> list[TopicInfo]:
    """The topics on the broker: the catalog's (under the prefix), or every one."""
    admin = await _admin(connection)
    try:
        infos = await _describe(admin, connection.request_timeout_s)
        if not all_topics:
            wanted = {connection.topic(spec.name) for spec in TOPIC_SPECS}
            infos = [info for info in infos if info.name in wanted]
        return sorted(infos, key=lambda info: info.name)
    except (TimeoutError, KafkaError) as exc:
        raise convert_kafka_error(exc, "describing topics") from exc
    finally:
        await admin.close()


async def _describe(admin: AIOKafkaAdminClient, request_timeout_s: float) -> list[TopicInfo]:
    names = await asyncio.wait_for(admin.list_topics(), timeout=request_timeout_s)
    if not names:
        return []
    described = await asyncio.wait_for(admin.describe_topics(list(names)), timeout=request_timeout_s)
    infos = []
    for topic in described:
        partitions = topic.get("partitions") or []
        replicas = max((len(p.get("replicas") or []) for p in partitions), default=0)
        infos.append(TopicInfo(topic["topic"], len(partitions), replicas))
    return infos
