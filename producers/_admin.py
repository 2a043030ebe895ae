"""Kafka administration: one short-lived admin client per operation, with the connection's security,
the connect retry, a timeout on every request, and our errors.

Every admin client of eventbus (the SDK's topic check, the retry topics of the runtime, ``topics
apply``, the readers and the stats) is opened here, so they all connect, time out and fail alike.

Example::

    async with kafka_admin(connection, "listing topics") as admin:
        names = await admin.topic_names()
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.protocol.admin import ApiVersionRequest

from ._config import KafkaConnection
from ._connect import connect_with_retry, convert_kafka_error

__all__ = ["GroupDescription", "GroupMember", "KafkaAdmin", "PartitionInfo", "TopicDescription", "kafka_admin"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One partition as the broker describes it. Example: ``PartitionInfo(0, leader=1, replicas=(1, 2, 3))``"""

    partition: int
    leader: int | None
    replicas: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class TopicDescription:
    """A topic's partitions (sorted by id). Example: ``len(description.partitions)``"""

    name: str
    partitions: tuple[PartitionInfo, ...] = field(default_factory=tuple)

    @property
    def replication_factor(self) -> int:
        """The largest replica count of its partitions (0 without partitions)."""
        return max((len(p.replicas) for p in self.partitions), default=0)


@dataclass(frozen=True, slots=True)
class GroupMember:
    """One member of a consumer group and the partitions assigned to it.

    Example: ``GroupMember("m-1", "eventbus-credits", "/127.0.0.1", (("t.session", 0),))``
    """

    member_id: str
    client_id: str
    host: str
    assignment: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class GroupDescription:
    """A consumer group as its coordinator describes it (``state``: Stable, Empty, Dead, ...).

    Example: ``GroupDescription("credits", "Empty").members == ()``
    """

    group: str
    state: str
    members: tuple[GroupMember, ...] = ()


def _assignment(raw: bytes | None) -> tuple[tuple[str, int], ...]:
    if not raw:
        return ()
    try:
        decoded = ConsumerProtocolMemberAssignment.decode(raw)
    except Exception:  # noqa: BLE001 - a non-consumer protocol's assignment: shown as none
        return ()
    return tuple(sorted((topic, int(p)) for topic, partitions in decoded.assignment for p in partitions))


class KafkaAdmin:
    """The requests eventbus makes of the cluster, each bounded by the connection's request timeout.

    Obtained from ``kafka_admin()``; aiokafka's errors and timeouts become ours there.
    """

    def __init__(self, client: AIOKafkaAdminClient, connection: KafkaConnection) -> None:
        self._client = client
        self._timeout_s = connection.request_timeout_s

    async def _timed(self, request: Awaitable[T]) -> T:
        return await asyncio.wait_for(request, timeout=self._timeout_s)

    async def topic_names(self) -> set[str]:
        """Every topic's name, from a metadata request that never auto-creates a topic."""
        return set(await self._timed(self._client.list_topics()))

    async def describe_topics(self, names: Sequence[str]) -> list[TopicDescription]:
        """The topics' partitions, leaders and replicas. Name only topics that exist: Tansu creates the others."""
        if not names:
            return []
        described: list[dict[str, Any]] = await self._timed(self._client.describe_topics(list(names)))
        return [
            TopicDescription(
                topic["topic"],
                tuple(
                    sorted(
                        (
                            PartitionInfo(
                                int(p["partition"]),
                                leader=p.get("leader"),
                                replicas=tuple(p.get("replicas") or ()),
                            )
                            for p in topic.get("partitions") or ()
                        ),
                        key=lambda p: p.partition,
                    )
                ),
            )
            for topic in described
        ]

    async def topic_configs(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        """Topic name -> its configs as DescribeConfigs reports them (topics in error are left out)."""
        if not names:
            return {}
        resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        responses = await self._timed(self._client.describe_configs(resources))
        out: dict[str, dict[str, str]] = {}
        for response in responses:
            for error_code, _message, _kind, name, entries in response.resources:
                if error_code == 0:
                    out[name] = {entry[0]: entry[1] for entry in entries if entry[1] is not None}
        return out

    async def broker_count(self) -> int:
        """How many brokers the cluster has."""
        cluster = await self._timed(self._client.describe_cluster())
        return len(cluster.get("brokers") or [])

    async def protocol_version(self) -> str:
        """What the broker's ApiVersions answer says of it: ``"Fetch v16 · Produce v11 · 60 APIs"`` (or ``"unknown"``).

        Kafka's protocol carries no software version; the newest Fetch and Produce versions date the broker.
        """
        brokers = sorted(broker.nodeId for broker in self._client._client.cluster.brokers())
        if not brokers:
            return "unknown"
        try:
            response = await self._timed(self._client._send_request(ApiVersionRequest(), brokers[0]))
        except (KafkaError, TimeoutError, AttributeError, TypeError):  # private API of aiokafka: best effort
            return "unknown"
        top = {int(key): int(high) for key, _low, high in response.api_versions}
        return f"Fetch v{top.get(1, '?')} · Produce v{top.get(0, '?')} · {len(top)} APIs"

    async def create_topic(
        self, name: str, *, partitions: int, replication: int, configs: Mapping[str, str] | None = None
    ) -> bool:
        """Create one topic; False when it exists already (created meanwhile by another process)."""
        topic = NewTopic(name, partitions, replication, topic_configs=dict(configs or {}))
        try:
            response = await self._timed(self._client.create_topics([topic]))
        except TopicAlreadyExistsError:
            return False
        # The broker answers per topic; aiokafka returns its refusals instead of raising them.
        for entry in response.topic_errors:
            code = entry[1]
            if code == TopicAlreadyExistsError.errno:
                return False
            if code != 0:
                detail = entry[2] if len(entry) > 2 and entry[2] else for_code(code).__name__  # v0 has no message
                raise for_code(code)(f"creating topic {name}: {detail}")
        return True

    async def committed_offsets(self, group: str, partitions: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The group's committed offsets of ``partitions`` ((topic, partition) pairs); uncommitted ones are absent.

        The partitions are always named: without them the embedded broker drops the connection.
        """
        wanted = [TopicPartition(topic, partition) for topic, partition in partitions]
        offsets = await self._timed(self._client.list_consumer_group_offsets(group, partitions=wanted))
        return {
            (tp.topic, tp.partition): meta.offset
            for tp, meta in offsets.items()
            if meta is not None and meta.offset >= 0
        }

    async def describe_groups(self, groups: Sequence[str]) -> list[GroupDescription]:
        """State, members and assignments of each group (a group nobody ever joined: ``Dead`` or ``Empty``).

        The embedded broker (Tansu) reports members without their assignments: those come back empty.
        """
        out: list[GroupDescription] = []
        for group in groups:
            responses = await self._timed(self._client.describe_consumer_groups([group]))
            for response in responses:
                for entry in response.groups:
                    error_code, name, state = entry[0], entry[1], entry[2]
                    if error_code != 0:
                        out.append(GroupDescription(name, "Unknown"))
                        continue
                    members = tuple(
                        GroupMember(str(m[0]), str(m[-4]), str(m[-3]), _assignment(m[-1])) for m in entry[5]
                    )
                    out.append(GroupDescription(str(name), str(state) or "Unknown", members))
        return out


@asynccontextmanager
async def kafka_admin(connection: KafkaConnection, action: str) -> AsyncIterator[KafkaAdmin]:
    """A connected admin client for one operation (``action`` names it in errors), closed at the end.

    Connecting retries up to ``connect_timeout_s``; a Kafka error or timeout inside the block
    becomes our error (``BrokerTimeoutError``, ``BrokerUnavailableError``, ...) naming ``action``.
    Example: ``async with kafka_admin(connection, "creating topics") as admin: await admin.create_topic(...)``
    """
    client = AIOKafkaAdminClient(**connection.client_options())
    try:
        await connect_with_retry(client.start, connection, f"admin: {action}")
        yield KafkaAdmin(client, connection)
    except (KafkaError, TimeoutError) as exc:
        raise convert_kafka_error(exc, action) from exc
    finally:
        await client.close()
