"""The aiokafka-backed consumer transport."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from producers import KafkaConnection, connect_with_retry, kafka_admin
from schemas.errors import BrokerError, CommitFailedError

from ._config import ConsumerConfig
from ._log_throttle import throttle_logs
from ._transport import ConsumedRecord, PartitionsCallback, TopicPartition

__all__ = ["KafkaConsumerTransport"]

_HELD_WAIT_MS = 5
"""How long a fetch waits for records while some partitions are paused (their resume must not wait longer)."""


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self, on_assigned: PartitionsCallback, on_revoked: PartitionsCallback, held: set[KafkaTopicPartition]
    ) -> None:
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._held = held
        self.to_verify: set[KafkaTopicPartition] = set()

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._on_revoked({TopicPartition(tp.topic, tp.partition) for tp in revoked})
        self._held.difference_update(revoked)  # a partition assigned again starts unpaused

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.to_verify.update(assigned)  # checked by the next fetch: did the broker keep our offsets?
        await self._on_assigned({TopicPartition(tp.topic, tp.partition) for tp in assigned})


class KafkaConsumerTransport:
    """A group member built on aiokafka's consumer, committing only what it is told to.

    Example: ``KafkaConsumerTransport(connection, ConsumerConfig(), group_id="credits")``
    """

    def __init__(self, connection: KafkaConnection, config: ConsumerConfig, *, group_id: str) -> None:
        self._connection = connection
        self._config = config
        self.group_id = group_id
        self._consumer: AIOKafkaConsumer | None = None
        self._held: set[KafkaTopicPartition] = set()  # "paused": left out of fetches (see ``pause``)
        self._resumed = asyncio.Event()
        self._listener: _Listener | None = None
        self._committed: dict[KafkaTopicPartition, int] = {}  # what this member committed, to notice a loss
        self._partitions: dict[str, int] = {}  # partition count of each subscribed topic, as first seen

    def _running(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            msg = "the consumer is not started"
            raise BrokerError(msg, retriable=False)
        return self._consumer

    async def start(self, topics: list[str], on_assigned: PartitionsCallback, on_revoked: PartitionsCallback) -> None:
        """Connect (retrying up to the connect timeout) and subscribe."""
        throttle_logs()  # a broker away makes aiokafka repeat each error many times a second
        config = self._config
        consumer = AIOKafkaConsumer(
            **self._connection.client_options(),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset=config.auto_offset_reset,
            session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=config.heartbeat_interval_ms,
            max_poll_interval_ms=config.max_poll_interval_ms,
            rebalance_timeout_ms=config.rebalance_timeout_ms,
            max_partition_fetch_bytes=config.max_partition_fetch_bytes,
            fetch_max_bytes=config.fetch_max_bytes,
            fetch_max_wait_ms=config.fetch_max_wait_ms,
            isolation_level=config.isolation_level,
        )
        try:
            await connect_with_retry(consumer.start, self._connection, f"consumer group {self.group_id}")
            self._listener = _Listener(on_assigned, on_revoked, self._held)
            consumer.subscribe(topics=topics, listener=self._listener)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer

    async def stop(self) -> None:
        """Leave the group (bounded by the request timeout) and close."""
        consumer, self._consumer = self._consumer, None
        self._held.clear()
        if consumer is None:
            return
        try:
            await asyncio.wait_for(consumer.stop(), timeout=self._connection.request_timeout_s)
        except (KafkaError, TimeoutError):
            return  # the broker will expire the membership after the session timeout

    async def fetch(self, timeout_s: float, max_records: int) -> dict[TopicPartition, list[ConsumedRecord]]:
        """One ``getmany`` round over the assigned partitions that are not paused.

        After an assignment, first checks that the broker still has what this member saw:
        a non-retriable ``BrokerError`` when committed offsets vanished or a topic lost
        partitions (a restarted memory-only broker, whose topics were created again by
        auto-creation): going on would silently consume the wrong topics from scratch.
        """
        consumer = self._running()
        if self._listener is not None and self._listener.to_verify:
            await self._verify(consumer, self._listener.to_verify)
        timeout_ms = int(timeout_s * 1000)
        try:
            if not self._held:
                batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
            else:
                wanted = [tp for tp in consumer.assignment() if tp not in self._held]
                if not wanted:  # every partition is paused: wait for a resume (getmany() would mean all)
                    self._resumed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._resumed.wait(), timeout_s)
                    return {}
                # A short wait: a partition resumed meanwhile is fetched on the next round, not after timeout_s.
                wait_ms = min(timeout_ms, _HELD_WAIT_MS)
                batch = await consumer.getmany(*wanted, timeout_ms=wait_ms, max_records=max_records)
        except KafkaError as exc:
            raise BrokerError(f"fetch failed: {exc!r}", retriable=True) from exc
        return batch  # type: ignore[no-any-return]

    async def _verify(self, consumer: AIOKafkaConsumer, assigned: set[KafkaTopicPartition]) -> None:
        lost: list[str] = []
        for topic in sorted({tp.topic for tp in assigned}):
            count = len(consumer.partitions_for_topic(topic) or ())
            known = self._partitions.setdefault(topic, count)
            if count < known:
                lost.append(f"topic {topic} has {count} partitions, it had {known}")
        for tp in sorted(assigned & self._committed.keys()):
            committed = await self.committed(TopicPartition(tp.topic, tp.partition))
            if committed is None:
                lost.append(f"the offset {self._committed[tp]} committed on {tp.topic}/{tp.partition} is gone")
        assigned.clear()
        if lost:
            msg = (
                f"the broker lost the state of group {self.group_id} ({'; '.join(lost[:3])}): it was restarted"
                " without its data (the embedded broker keeps nothing). Create the topics again"
                " (`eventbus topics apply`) and restart the group"
            )
            raise BrokerError(msg, retriable=False)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit, bounded by the request timeout (a broker that lost its state can hang commits)."""
        kafka_offsets = {KafkaTopicPartition(tp.topic, tp.partition): offset for tp, offset in offsets.items()}
        try:
            await asyncio.wait_for(self._running().commit(kafka_offsets), timeout=self._connection.request_timeout_s)
        except (KafkaError, TimeoutError) as exc:
            raise CommitFailedError(f"commit of {len(offsets)} partitions failed: {exc!r}") from exc
        self._committed.update(kafka_offsets)

    async def committed(self, partition: TopicPartition) -> int | None:
        """The group's committed offset for a partition."""
        tp = KafkaTopicPartition(partition.topic, partition.partition)
        try:
            value = await asyncio.wait_for(self._running().committed(tp), timeout=self._connection.request_timeout_s)
        except (KafkaError, TimeoutError) as exc:
            raise BrokerError(f"reading the committed offset failed: {exc!r}") from exc
        return None if value is None else int(value)

    def pause(self, partitions: set[TopicPartition]) -> None:
        """Stop fetching these partitions: ``fetch`` leaves them out.

        Not aiokafka's ``pause()``: a ``getmany()`` while a partition is paused there throws away
        the records already prefetched for it (to fetch them again after ``resume()``), and a
        runtime that pauses often then churns through fetch buffers. Left out of ``getmany()``, a
        partition keeps at most the one response prefetched for it (aiokafka fetches a partition
        again only once its records were taken).
        """
        self._held.update(KafkaTopicPartition(tp.topic, tp.partition) for tp in partitions)

    def resume(self, partitions: set[TopicPartition]) -> None:
        """Fetch these partitions again."""
        self._held.difference_update(KafkaTopicPartition(tp.topic, tp.partition) for tp in partitions)
        self._resumed.set()

    async def ensure_topics(self, names: list[str], *, partitions: int, replication: int) -> None:
        """Create the missing topics explicitly (never through auto-creation)."""
        async with kafka_admin(self._connection, "creating the retry topics") as admin:
            existing = await admin.topic_names()
            for name in names:
                if name not in existing:  # False from create_topic: another member created it meanwhile
                    await admin.create_topic(name, partitions=partitions, replication=replication)

    def highwater(self, partition: TopicPartition) -> int | None:
        """End offset as reported by the last fetch (the embedded broker's ``end_offsets`` is wrong)."""
        value = self._running().highwater(KafkaTopicPartition(partition.topic, partition.partition))
        return None if value is None else int(value)
