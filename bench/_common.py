"""Shared pieces of the benchmarks: broker, topics, workload, timing, rounds, tables and JSON results."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2

from infra._embedded import EmbeddedBroker
from infra._kafka_cluster import KafkaCluster
from infra._settings import Settings
from schemas import AvroCodec, SessionCreated

from ._output import (
    ENV_BOOTSTRAP,
    ENV_BROKER,
    bench_broker,
    console,
    machine_info,
    print_table,
    results_dir,
    write_results,
)

__all__ = [
    "DEFAULT_EVENTS",
    "DEFAULT_ROUNDS",
    "ENV_BROKER",
    "PARTITIONS",
    "CommitWatch",
    "KeyCheck",
    "Record",
    "Sample",
    "base_parser",
    "bench_broker",
    "broker",
    "build_events",
    "check_keys",
    "committed_total",
    "console",
    "create_topic",
    "delete_topics",
    "encoded_records",
    "expected_partition",
    "fetch_options",
    "freeze_workload",
    "iter_events",
    "machine_info",
    "median",
    "per_round_ratio",
    "print_table",
    "produce_backlog",
    "raw_consumer_options",
    "raw_producer_options",
    "results_dir",
    "run_interleaved",
    "settings_for",
    "summarize",
    "unique_name",
    "write_results",
]

PARTITIONS = 3
DEFAULT_EVENTS = 100_000
DEFAULT_ROUNDS = 3
_SESSION_TYPES = ("video", "chat", "Mentoría Individual", "group")


# -- broker, settings, topics ------------------------------------------------------


@contextlib.contextmanager
def broker() -> Iterator[str]:
    """Bootstrap servers: ``$EVENTBUS_BOOTSTRAP_SERVERS`` if set, else an embedded broker started here.

    The embedded one is Tansu, or a one-node Apache Kafka when ``EVENTBUS_BENCH_BROKER=kafka``.
    """
    external = os.environ.get(ENV_BOOTSTRAP)
    if external:
        yield external
        return
    if bench_broker() == "kafka":
        cluster = KafkaCluster(nodes=1, heap_mb=1024)
        cluster.start()
        try:
            yield cluster.bootstrap_servers
        finally:
            cluster.stop()
        return
    embedded = EmbeddedBroker()
    embedded.start()
    try:
        yield embedded.bootstrap_servers
    finally:
        embedded.stop()


def unique_name(tag: str) -> str:
    """A topic prefix or group id of its own: ``bench-<tag>-<8 hex>-``."""
    return f"bench-{tag}-{uuid.uuid4().hex[:8]}-"


def settings_for(bootstrap: str, prefix: str = "") -> Settings:
    """The SDK settings every variant shares: the embedded profile on Tansu (no idempotence, short group
    timeouts), the kafka profile on Apache Kafka (idempotent producer; replication 1 on the one node)."""
    if bench_broker() == "kafka":
        return Settings(
            bootstrap_servers=bootstrap,
            profile="kafka",
            topic_prefix=prefix,
            client_id="eventbus-bench",
            replication_factor=1,
        )
    return Settings(bootstrap_servers=bootstrap, profile="embedded", topic_prefix=prefix, client_id="eventbus-bench")


def raw_producer_options(settings: Settings) -> dict[str, Any]:
    """aiokafka producer keyword arguments equal to what the SDK's transport uses."""
    config = settings.publisher_config()
    options = settings.connection().client_options()
    options["request_timeout_ms"] = int(config.delivery_timeout_s * 1000)
    return options | {
        "acks": config.acks,
        "enable_idempotence": config.enable_idempotence,
        "compression_type": None if config.compression == "none" else config.compression,
        "linger_ms": config.linger_ms,
        "max_batch_size": config.max_batch_bytes,
        "max_request_size": config.max_message_bytes + 4096,
    }


# ConsumerConfig fields that are aiokafka consumer arguments of the same name (whichever the config has).
_CONSUMER_ARGUMENTS = (
    "session_timeout_ms",
    "heartbeat_interval_ms",
    "max_poll_interval_ms",
    "rebalance_timeout_ms",
    "max_partition_fetch_bytes",
    "fetch_max_bytes",
    "fetch_max_wait_ms",
    "fetch_min_bytes",
)


def raw_consumer_options(settings: Settings) -> dict[str, Any]:
    """aiokafka consumer keyword arguments equal to what the runtime's transport uses (manual commits)."""
    config = settings.consumer_config().model_dump()
    fetching = {name: config[name] for name in _CONSUMER_ARGUMENTS if name in config}
    return (
        settings.connection().client_options()
        | fetching
        | {"enable_auto_commit": False, "auto_offset_reset": "earliest"}
    )


def fetch_options(settings: Settings) -> dict[str, Any]:
    """The runtime's fetch settings, for FastStream's subscriber (which takes the same aiokafka names)."""
    options = raw_consumer_options(settings)
    names = (
        "session_timeout_ms",
        "heartbeat_interval_ms",
        "max_partition_fetch_bytes",
        "fetch_max_bytes",
        "fetch_max_wait_ms",
    )
    return {name: options[name] for name in names if name in options}


async def create_topic(bootstrap: str, name: str, partitions: int = PARTITIONS) -> None:
    """Create one topic explicitly (the broker would auto-create it with 4 partitions otherwise)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, names: Sequence[str]) -> None:
    """Delete topics, ignoring failures (frees the in-memory broker's storage, if it does)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(admin.delete_topics(list(names)), timeout=30)
    finally:
        await admin.close()


async def committed_total(bootstrap: str, group: str, topic: str) -> int:
    """Sum over the topic's partitions of the group's committed offsets (partitions passed: Tansu needs them)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        offsets = await asyncio.wait_for(admin.list_consumer_group_offsets(group, partitions=tps), timeout=30)
    finally:
        await admin.close()
    return sum(max(0, int(meta.offset)) for meta in offsets.values())


class CommitWatch:
    """Tells when a group's committed offsets on a topic cover N records (polled every few milliseconds).

    Started before the clock runs (its client's start is not measured); ``covered_at`` returns the
    ``time.perf_counter()`` of the first poll that sees N. Example::

        async with CommitWatch(bootstrap) as watch:
            stopped = await watch.covered_at(group, topic, 100_000)
    """

    def __init__(self, bootstrap: str, *, poll_s: float = 0.005) -> None:
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self.poll_s = poll_s

    async def __aenter__(self) -> CommitWatch:
        await self.admin.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.admin.close()

    async def covered_at(self, group: str, topic: str, n: int, *, timeout_s: float = 120.0) -> float:
        """The moment the committed offsets first sum to ``n`` or more; RuntimeError after ``timeout_s``."""
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        deadline = time.monotonic() + timeout_s
        while True:
            offsets = await asyncio.wait_for(self.admin.list_consumer_group_offsets(group, partitions=tps), 30)
            if sum(max(0, int(meta.offset)) for meta in offsets.values()) >= n:
                return time.perf_counter()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the commits of {group} did not cover {n:,} records in {timeout_s:.0f} s")
            await asyncio.sleep(self.poll_s)


# -- workload ----------------------------------------------------------------------


def iter_events(n: int, *, seed: int = 20_240_517) -> Iterator[SessionCreated]:
    """``n`` ``session:created`` events, made one at a time (for workloads too big to hold)."""
    rng = random.Random(seed)
    start = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
    for _ in range(n):
        yield SessionCreated(
            session_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            coach_id=f"coach-{rng.randrange(500)}",
            user_id=f"user-{rng.randrange(50_000)}",
            scheduled_at=start + timedelta(minutes=15 * rng.randrange(40_000)),
            session_type=rng.choice(_SESSION_TYPES),
            cost_credits=rng.randrange(1, 12),
            duration_minutes=rng.choice((30, 45, 60, 90)),
            coach_name="Ada Lovelace",
            client_name="Grace Hopper",
        )


def build_events(n: int, *, seed: int = 20_240_517) -> list[SessionCreated]:
    """``n`` ``session:created`` events: uuid session ids (the keys), timestamps, an int credit cost.

    The catalog's ``session:created`` has no decimal field (``cost_credits`` is an Avro int), so the
    workload carries none; a decimal would need a schema change, which a benchmark must not make.
    """
    return list(iter_events(n, seed=seed))


def freeze_workload() -> None:
    """Move everything alive now (the pre-built workload) out of the garbage collector's sight.

    A benchmark holds 100 000 pre-built models, which a real service would not: without this, every
    full collection traverses them and taxes whichever variant allocates most. Applies to all variants.
    """
    gc.collect()
    gc.freeze()


Record = tuple[bytes, bytes, list[tuple[str, bytes]]]


def encoded_records(events: Sequence[SessionCreated], *, json_body: bool = False) -> list[Record]:
    """(key, value, headers) per event: Avro with the SDK's headers, or FastStream's JSON with its content type."""
    if json_body:
        return [
            (e.session_id.encode(), e.model_dump_json().encode(), [("content-type", b"application/json")])
            for e in events
        ]
    codec = AvroCodec()
    return [
        (
            e.session_id.encode(),
            codec.encode(e),
            [("event-type", b"session:created"), ("event-id", str(e.metadata.event_id).encode())],
        )
        for e in events
    ]


def expected_partition(key: bytes, partitions: int = PARTITIONS) -> int:
    """Where the Java client's default partitioner (and aiokafka's) puts ``key``."""
    return (int(murmur2(key)) & 0x7FFFFFFF) % partitions


async def produce_backlog(bootstrap: str, topic: str, records: Sequence[Record], total: int) -> None:
    """Write ``total`` records (cycling through ``records``) with batches per murmur2 partition: fast setup.

    Batches are as big as the SDK's (``max_batch_bytes``): the broker returns whole batches to fetches, so
    their size shapes what consumers hold in memory.
    """
    options = raw_producer_options(settings_for(bootstrap))
    producer = AIOKafkaProducer(**options)
    await producer.start()
    try:
        builders = [producer.create_batch() for _ in range(PARTITIONS)]
        futures: list[asyncio.Future[Any]] = []
        for i in range(total):
            key, value, headers = records[i % len(records)]
            part = expected_partition(key)
            if builders[part].append(key=key, value=value, timestamp=None, headers=headers) is None:
                futures.append(await producer.send_batch(builders[part], topic, partition=part))
                builders[part] = producer.create_batch()
                builders[part].append(key=key, value=value, timestamp=None, headers=headers)
        for part, builder in enumerate(builders):
            if builder.record_count():
                futures.append(await producer.send_batch(builder, topic, partition=part))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@dataclass
class KeyCheck:
    """Records read back from a topic, and how many sit on another partition than murmur2 says."""

    read: int
    misplaced: int
    per_partition: list[int]

    def ok(self, expected: int) -> bool:
        """All records there, each on its key's partition."""
        return self.read == expected and self.misplaced == 0


async def check_keys(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> KeyCheck:
    """Read the whole topic back and compare each record's partition with its key's murmur2 partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    check = KeyCheck(0, 0, [0] * PARTITIONS)
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        idle_until = time.monotonic() + 5.0
        while check.read < expected and time.monotonic() < min(deadline, idle_until):
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for tp, records in batch.items():
                idle_until = time.monotonic() + 5.0
                check.read += len(records)
                check.per_partition[tp.partition] += len(records)
                check.misplaced += sum(1 for r in records if expected_partition(r.key) != tp.partition)
    finally:
        await consumer.stop()
    return check


# -- measuring ---------------------------------------------------------------------


@dataclass
class Sample:
    """One measurement of one variant in one round."""

    events: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Events per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if values else float("nan")


Variant = tuple[str, Callable[[], Awaitable[Sample]]]


async def run_interleaved(variants: Sequence[Variant], rounds: int) -> dict[str, list[Sample]]:
    """Round r runs every variant once, in order, before round r + 1: noise hits all variants alike."""
    samples: dict[str, list[Sample]] = {name: [] for name, _ in variants}
    for r in range(1, rounds + 1):
        for name, run in variants:
            sample = await run()
            samples[name].append(sample)
            extra = " ".join(f"{k}={v}" for k, v in sample.extra.items() if not isinstance(v, (list, dict)))
            console.print(f"  round {r}/{rounds} {name:<46} {sample.rate:>12,.0f} /s  {sample.seconds:7.2f} s  {extra}")
    return samples


def per_round_ratio(samples: dict[str, list[Sample]], num: str, den: str) -> list[float]:
    """rate(num) / rate(den), round by round (the two were measured back to back)."""
    return [a.rate / b.rate for a, b in zip(samples[num], samples[den], strict=True) if b.rate > 0]


def summarize(samples: dict[str, list[Sample]]) -> dict[str, dict[str, Any]]:
    """Median, min and max rate per variant, with every round's rate and extras."""
    return {
        name: {
            "median_rate": median([s.rate for s in runs]),
            "min_rate": min((s.rate for s in runs), default=float("nan")),
            "max_rate": max((s.rate for s in runs), default=float("nan")),
            "rounds": [{"events": s.events, "seconds": s.seconds, "rate": s.rate, **s.extra} for s in runs],
        }
        for name, runs in samples.items()
    }


def base_parser(
    description: str, *, events: int = DEFAULT_EVENTS, rounds: int = DEFAULT_ROUNDS
) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--events`` and ``--rounds``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--events", type=int, default=events, help=f"events per measurement (default {events:,})")
    parser.add_argument(
        "--rounds", type=int, default=rounds, help=f"interleaved rounds, >= 3 for the medians (default {rounds})"
    )
    return parser
