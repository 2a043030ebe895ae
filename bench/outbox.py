"""The transactional outbox: relay throughput and commit -> published latency, side by side with the SDK.

``python -m bench.outbox [--events N] [--rounds R] [--relay-configs 4x500,8x1000,4x2000] [--rate 1000] [--seconds S]
[--writer asyncpg|outbox] [--experiment] [--poll-diagnostic] [--quick] [--skip-throughput] [--skip-latency]
[--profile]``

Every outbox measurement gets a PostgreSQL database of its own (``CREATE DATABASE`` on
``$EVENTBUS_BENCH_POSTGRES_URL``, default ``postgresql://root@127.0.0.1:5432/test``; dropped afterwards) with
``OUTBOX_MIGRATION``, and every measurement a fresh topic prefix with the project's topics (``apply_topics``:
``session`` has 6 partitions), deleted afterwards.

* **Throughput**: N ``session:created`` events are written to the outbox first (``Outbox.add_many`` in
  transactions of 100, not timed), then an ``OutboxRelay`` is started in this process and timed from ``run()``
  until it has sent every row (it deletes rows only once the broker acknowledged them, so ``stats.sent == N``
  means the backlog is empty and every record acknowledged). Then the backlog is checked to be 0 and the topic
  read back by an independent reader (confluent-kafka, read_committed): every event id must be there. In the
  same round: the SDK publishing the same N events directly (``send()`` + ``flush()``), and a diagnostic, the
  relay's Kafka side alone (pre-encoded records, ``publish_records`` of ``batch_size`` per slot task, each task
  with the keys of its slot; in Kafka transactions with a progress record where the relay uses them).
* **Latency** at ``--rate`` events/s: writers commit one event per transaction (a task per event, started at
  its scheduled time against a monotonic clock), the relay runs in a subprocess (``eventbus relay`` is a
  process of its own), a group-less aiokafka consumer in another subprocess (assigned every partition, the
  runtime's fetch settings and isolation level) notes when it reads each record. Commit-to-published = read
  time - the wall clock right after the writer's transaction committed, by event id. Side by side: the same
  rate published directly with ``await publisher.publish(event)`` (a task per event), publish-call-to-read.
  The first second of events is warm-up; before it, one probe event per relay slot goes through (so every
  slot's producer is up). The writers insert the rows ``Outbox.add_many`` builds through an asyncpg pool
  (``--writer outbox``: ``Outbox.add`` in a ``consumers.Database`` transaction, ~1 ms of client CPU each).

``--experiment`` adds ``FewerRoundTripsRelay`` (a batch's delete and the slot's next fetch in one statement),
``--poll-diagnostic`` the outbox without its NOTIFY trigger and the relay polling every 10 ms; ``--profile`` one
more relay throughput run under pyinstrument. Tables on the console, ``bench/results/outbox.json``
(``bench/results/kafka/`` with ``EVENTBUS_BENCH_BROKER=kafka``); see ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError
from confluent_kafka import TopicPartition as RdkTopicPartition
from sqlalchemy import text

from consumers import OUTBOX_MIGRATION, OUTBOX_PROGRESS_TOPIC, Database, OutboxRelay, RelayConfig
from infra._settings import Settings
from infra._topics import TOPIC_SPECS, apply_topics
from producers import OUTBOX_TABLE, EventPublisher, Outbox, OutgoingRecord, bucket_of
from schemas import EventMetadata, SessionCreated

from ._common import (
    DEFAULT_EVENTS,
    DEFAULT_ROUNDS,
    Sample,
    bench_broker,
    broker,
    build_events,
    console,
    delete_topics,
    freeze_workload,
    iter_events,
    median,
    per_round_ratio,
    print_table,
    raw_consumer_options,
    run_interleaved,
    settings_for,
    summarize,
    unique_name,
    write_results,
)

ENV_POSTGRES = "EVENTBUS_BENCH_POSTGRES_URL"
DEFAULT_POSTGRES = "postgresql://root@127.0.0.1:5432/test"
FILL_CHUNK = 100
"""Events per outbox transaction when the backlog is written (not timed)."""
DEFAULT_RELAY = (RelayConfig().slots, RelayConfig().batch_size)
"""The relay the targets are about: RelayConfig's defaults (4 slots, batches of 500)."""
DEFAULT_RELAY_CONFIGS = f"{DEFAULT_RELAY[0]}x{DEFAULT_RELAY[1]},8x1000,4x2000"
"""slots x batch_size of the relay variants; the first is the one the targets are about."""
DEFAULT_RATE = 1000
DEFAULT_SECONDS = 10.0
WARMUP_S = 1.0
QUICK_EVENTS = 20_000
SESSION_TOPIC = "session"
SESSION_PARTITIONS = {spec.name: spec.partitions for spec in TOPIC_SPECS}[SESSION_TOPIC]
TARGET_RATE = 20_000.0
TARGET_P99_MS = 50.0

DIRECT = "SDK send() + flush() (direct)"
LAT_OUTBOX = "outbox: commit -> read"
LAT_DIRECT = "SDK await publish(): call -> read (direct)"
POLL_DIAGNOSTIC_S = 0.01
LAT_EXPERIMENT = "outbox: commit -> read, delete + next fetch in 1 statement (experiment)"
LAT_POLL = f"outbox without NOTIFY, relay polling every {POLL_DIAGNOSTIC_S * 1000:g} ms (diagnostic)"


def relay_label(slots: int, batch: int) -> str:
    """The name of a relay variant."""
    return f"relay slots={slots} batch={batch}"


def kafka_side_label(slots: int, batch: int) -> str:
    """The name of the diagnostic: the relay's Kafka side alone."""
    return f"publish_records({batch}) x {slots} slot tasks, no database (diagnostic)"


def parse_relay_configs(text_value: str) -> list[tuple[int, int]]:
    """``"4x500,8x1000"`` -> ``[(4, 500), (8, 1000)]``."""
    configs = []
    for item in text_value.split(","):
        if item.strip():
            slots, batch = item.lower().split("x")
            configs.append((int(slots), int(batch)))
    if not configs:
        raise SystemExit("--relay-configs: give at least one SLOTSxBATCH")
    return configs


# -- PostgreSQL --------------------------------------------------------------------------------


def postgres_url() -> str:
    """The server (and a database on it to connect to) where each measurement creates its own database."""
    return os.environ.get(ENV_POSTGRES, DEFAULT_POSTGRES)


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A new, empty database on the benchmark's PostgreSQL server; dropped at the end (with its connections)."""
    admin_url = postgres_url()
    name = f"bench_outbox_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def backlog_of(database: Database) -> int:
    """Rows in the outbox."""
    async with database.begin() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM eventbus_outbox"))).scalar_one())


async def drop_outbox_triggers(database: Database) -> None:
    """Drop the outbox table's triggers (its NOTIFY on insert), whatever their names."""
    async with database.begin() as conn:
        found = await conn.execute(
            text("SELECT tgname FROM pg_trigger WHERE tgrelid = 'eventbus_outbox'::regclass AND NOT tgisinternal")
        )
        for (name,) in found.all():
            await conn.execute(text(f'DROP TRIGGER "{name}" ON eventbus_outbox'))


async def parked_of(database: Database) -> int:
    """Rows the relay set aside."""
    async with database.begin() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM eventbus_outbox_parked"))).scalar_one())


WRITERS = ("asyncpg", "outbox")
"""Latency writers: the rows ``Outbox.add_many`` builds, inserted one per transaction through an asyncpg pool
(default: little client CPU), or ``Outbox.add`` itself in a SQLAlchemy transaction of ``consumers.Database``."""
WRITER_POOL = 8


class _RowCapture:
    """Stands in for a connection: keeps the rows ``Outbox.add_many`` inserts, touches no database."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    async def execute(self, statement: Any, parameters: Any = None) -> None:
        if parameters is None:  # one row: insert(...).values(row)
            parameters = [dict(statement.compile().params)]
        self.rows.extend(parameters)


async def outbox_rows(outbox: Outbox, events: Sequence[SessionCreated]) -> tuple[str, dict[str, tuple[Any, ...]]]:
    """The INSERT of the outbox's rows (``$n`` parameters) and, per event id, its values (``created_at`` last).

    The rows are the ones ``Outbox.add_many`` builds (same code: columns and values follow it).
    """
    capture = _RowCapture()
    for i in range(0, len(events), FILL_CHUNK):
        await outbox.add_many(capture, events[i : i + FILL_CHUNK])  # type: ignore[arg-type]
    columns = [name for name in capture.rows[0] if name != "created_at"] + ["created_at"]
    placeholders = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
    # the names come from the outbox's own table and rows, not from input
    statement = f"INSERT INTO {OUTBOX_TABLE.name} ({', '.join(columns)}) VALUES ({placeholders})"  # noqa: S608
    values = {row["event_id"]: tuple(row[name] for name in columns[:-1]) for row in capture.rows}
    return statement, values


# -- topics and the independent reader ---------------------------------------------------------


def topic_names(settings: Settings) -> list[str]:
    """Every topic ``apply_topics`` creates under the settings' prefix."""
    connection = settings.connection()
    return [connection.topic(spec.name) for spec in TOPIC_SPECS]


def read_back(bootstrap: str, topic: str, partitions: int, timeout_s: float = 180.0) -> tuple[int, int]:
    """Read the whole topic with confluent-kafka (read_committed): (records, distinct event ids).

    Runs after everything was acknowledged: it stops when every partition reached its end.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    records = 0
    ids: set[Any] = set()
    at_end: set[int] = set()
    try:
        consumer.assign([RdkTopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        deadline = time.monotonic() + timeout_s
        while len(at_end) < partitions and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(message.partition() or 0)
                    continue
                records += 1
                at_end.discard(message.partition() or 0)
                for header in message.headers() or []:
                    if header[0] == "event-id":
                        ids.add(header[1])
                        break
    finally:
        consumer.close()
    return records, len(ids)


# -- instrumentation of the relay (measurement only: wall time per phase) ------------------------


@dataclass
class Phases:
    """Wall time the relay's slot tasks spent in each step (summed over the slots)."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    STEPS = ("_fetch", "_send", "_send_in_transaction", "_delete")

    def wrap(self, relay: OutboxRelay) -> Phases:
        """Time ``relay``'s fetch, send and delete steps (its instance attributes shadow the methods)."""
        for name in self.STEPS:
            original = getattr(relay, name)

            async def timed(*args: Any, _original: Any = original, _name: str = name) -> Any:
                started = time.perf_counter()
                try:
                    return await _original(*args)
                finally:
                    self.seconds[_name] += time.perf_counter() - started
                    self.calls[_name] += 1

            setattr(relay, name, timed)
        return self

    def as_dict(self) -> dict[str, Any]:
        """Seconds and calls per step (steps never called left out)."""
        return {
            name.lstrip("_"): {"seconds": round(self.seconds[name], 3), "calls": self.calls[name]}
            for name in self.STEPS
            if self.calls.get(name)
        }


def phase_shares(phases: dict[str, Any], slots: int, seconds: float) -> dict[str, float]:
    """Each step's share of the slot tasks' time (slots x elapsed); the rest is waiting and the loop."""
    total = max(1e-9, slots * seconds)
    return {name: round(data["seconds"] / total, 3) for name, data in phases.items()}


# -- experiment: the relay with fewer database round trips (what the report proposes; not the product) ---------

_FETCH_AFTER_DELETE = (
    "WITH gone AS (DELETE FROM eventbus_outbox WHERE id = ANY($1::bigint[]))"
    " SELECT id, event_id, event_type, topic, record_key, record_value, headers FROM eventbus_outbox"
    " WHERE scope = $2 AND bucket = ANY($3::smallint[]) AND id <> ALL($1::bigint[]) ORDER BY id LIMIT $4"
)


class FewerRoundTripsRelay(OutboxRelay):
    """``OutboxRelay`` with one change, to measure it: a slot's delete of its sent rows and its next fetch are
    one statement (``WITH ... DELETE`` + ``SELECT``, autocommit) on an asyncpg connection of the slot's own.

    The product does three transactions per batch through the pool (fetch, then after the acks a delete, each
    with the pool's pre-ping, BEGIN and COMMIT): about eight round trips; this does one. A row is still deleted
    only after its ack (the delete waits for the slot's next fetch). Relies on the relay's private names
    (``_fetch``, ``_delete``, ``_Row``); benchmark only, opt-in (``--experiment``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connections: dict[int, Any] = {}
        self._deferred: dict[object, list[int]] = defaultdict(list)
        self._dsn = self.database.url.replace("postgresql+asyncpg://", "postgresql://", 1)

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop``; then close the slots' connections."""
        try:
            await super().run(stop)
        finally:
            for conn in self._connections.values():
                await conn.close()

    async def _delete(self, ids: Sequence[int]) -> None:
        self._deferred[asyncio.current_task()].extend(ids)  # the slot task's next fetch deletes them

    async def _fetch(self, slot: Any) -> list[Any]:
        from consumers._outbox_relay import _Row  # noqa: PLC0415 - the experiment only
        from producers import decode_headers  # noqa: PLC0415

        conn = self._connections.get(slot.number)
        if conn is None or conn.is_closed():
            conn = self._connections[slot.number] = await asyncpg.connect(self._dsn)
        ids = self._deferred.pop(asyncio.current_task(), [])
        found = await conn.fetch(_FETCH_AFTER_DELETE, ids, self.scope, slot.buckets, self.config.batch_size)
        return [
            _Row(
                row["id"],
                row["event_id"],
                row["event_type"],
                OutgoingRecord(row["topic"], row["record_key"], row["record_value"], decode_headers(row["headers"])),
            )
            for row in found
        ]


def experiment_label(slots: int, batch: int) -> str:
    """The name of the experiment's variant."""
    return f"{relay_label(slots, batch)}, delete + next fetch in 1 statement (experiment)"


# -- throughput ----------------------------------------------------------------------------------


def _cpu(cpu_s: float, seconds: float, events: int) -> dict[str, float]:
    """This process's CPU over a measurement: share of one core, and microseconds per event."""
    return {"cpu_percent": round(100 * cpu_s / seconds), "cpu_us_per_event": round(cpu_s / events * 1e6, 1)}


class ThroughputBench:
    """The throughput variants, sharing one broker and one pre-built workload."""

    def __init__(self, bootstrap: str, events: list[SessionCreated]) -> None:
        self.bootstrap = bootstrap
        self.events = events

    async def _topics(self, tag: str) -> Settings:
        settings = settings_for(self.bootstrap, unique_name(tag))
        await apply_topics(settings.connection(), replication_factor=1)
        return settings

    async def _check(self, settings: Settings, sample: Sample) -> Sample:
        topic = settings.connection().topic(SESSION_TOPIC)
        records, distinct = await asyncio.to_thread(read_back, self.bootstrap, topic, SESSION_PARTITIONS)
        n = len(self.events)
        sample.extra |= {"read": records, "distinct": distinct, "all_there": "yes" if distinct == n else "NO"}
        sample.extra["load1"] = round(os.getloadavg()[0], 2)  # the machine's 1-minute load: others' work too
        return sample

    async def relay(self, slots: int, batch: int, *, profiler: Any = None, experiment: bool = False) -> Sample:
        """Outbox filled (not timed), then the relay timed from ``run()`` until it sent every row."""
        settings = await self._topics("obx")
        async with fresh_database() as url:
            database = Database(url)
            try:
                sample = await self._relay_on(database, settings, (slots, batch), profiler, experiment=experiment)
            finally:
                await database.close()
        await self._check(settings, sample)
        await delete_topics(self.bootstrap, topic_names(settings))
        return sample

    async def _relay_on(
        self, database: Database, settings: Settings, config: tuple[int, int], profiler: Any, *, experiment: bool
    ) -> Sample:
        n, (slots, batch) = len(self.events), config
        await database.migrate([OUTBOX_MIGRATION])
        outbox = Outbox(connection=settings.connection(), config=settings.publisher_config(service="bench"))
        fill_started = time.perf_counter()
        for i in range(0, n, FILL_CHUNK):
            async with database.begin() as conn:
                await outbox.add_many(conn, self.events[i : i + FILL_CHUNK])
        fill_s = time.perf_counter() - fill_started
        relay = (FewerRoundTripsRelay if experiment else OutboxRelay)(
            database,
            connection=settings.connection(),
            publisher_config=settings.publisher_config(service="bench-relay"),
            config=RelayConfig(slots=slots, batch_size=batch),
        )
        phases = Phases().wrap(relay)
        stop = asyncio.Event()
        if profiler is not None:
            profiler.start()
        started, cpu = time.perf_counter(), time.process_time()
        task = asyncio.create_task(relay.run(stop))
        first_s = 0.0
        deadline = started + max(180.0, n / 500)
        while relay.stats.sent < n:
            if task.done() or time.perf_counter() > deadline:
                stop.set()
                await task
                raise RuntimeError(f"the relay stopped or stalled at {relay.stats.sent:,} of {n:,} rows")
            if not first_s and relay.stats.sent:
                first_s = time.perf_counter() - started
            await asyncio.sleep(0.002)
        while experiment and await backlog_of(database):  # noqa: ASYNC110 - its last delete rides on a fetch
            await asyncio.sleep(0.002)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        if profiler is not None:
            profiler.stop()
        stop.set()
        await task
        stats = relay.stats
        return Sample(
            n,
            seconds,
            {
                **_cpu(cpu, seconds, n),
                "fill_rate": round(n / fill_s),
                "first_batch_s": round(first_s, 3),
                "backlog_after": await backlog_of(database),
                "parked": await parked_of(database),
                "sent": stats.sent,
                "batches": stats.batches,
                "errors": stats.errors,
                "exactly_once": relay.exactly_once,
                "phases": phases.as_dict(),
                "phase_shares": phase_shares(phases.as_dict(), slots, seconds),
            },
        )

    async def direct(self) -> Sample:
        """The SDK publishing the same events: ``send()`` for each, then ``flush()`` (all acknowledged)."""
        settings = await self._topics("obd")
        async with EventPublisher(
            connection=settings.connection(), config=settings.publisher_config(service="bench")
        ) as publisher:
            started, cpu = time.perf_counter(), time.process_time()
            for event in self.events:
                await publisher.send(event)
            await publisher.flush()
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            sample = Sample(len(self.events), seconds, _cpu(cpu, seconds, len(self.events)))
        await self._check(settings, sample)
        await delete_topics(self.bootstrap, topic_names(settings))
        return sample

    async def kafka_side(self, slots: int, batch: int) -> Sample:
        """The relay without its database: pre-encoded records, ``batch`` at a time per slot task.

        Each task takes the keys of its slot (``bucket % slots``) as the relay does; with an idempotent
        publisher (Apache Kafka) each batch is a Kafka transaction with a progress record, as the relay's.
        """
        settings = await self._topics("obk")
        connection = settings.connection()
        config = settings.publisher_config(service="bench")
        records: list[list[OutgoingRecord]] = [[] for _ in range(slots)]
        preparer = EventPublisher(connection=connection, config=config)
        for event in self.events:
            record = preparer.prepare(event)
            records[bucket_of(record.key) % slots].append(record)
        transactional = config.enable_idempotence
        progress_topic = connection.topic(OUTBOX_PROGRESS_TOPIC)
        publishers = [
            EventPublisher(
                connection=connection,
                config=config.model_copy(update={"transactional_id": f"{connection.topic_prefix}diag-{k}"})
                if transactional
                else config,
            )
            for k in range(slots if transactional else 1)
        ]
        for publisher in publishers:
            await publisher.start()
        failures = 0

        async def slot_task(k: int) -> None:
            nonlocal failures
            publisher = publishers[k if transactional else 0]
            mine = records[k]
            for i in range(0, len(mine), batch):
                chunk = mine[i : i + batch]
                if transactional:
                    progress = OutgoingRecord(progress_topic, f"slot-{k}".encode(), b'{"ids": []}', [])
                    async with publisher.transaction():
                        results = await publisher.publish_records([*chunk, progress])
                else:
                    results = await publisher.publish_records(chunk)
                failures += sum(1 for r in results if isinstance(r, Exception))

        try:
            started, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(slot_task(k) for k in range(slots)))
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            sample = Sample(len(self.events), seconds, {**_cpu(cpu, seconds, len(self.events)), "failures": failures})
        finally:
            for publisher in publishers:
                await publisher.close()
        await self._check(settings, sample)
        await delete_topics(self.bootstrap, topic_names(settings))
        return sample


# -- latency: the children ------------------------------------------------------------------------


async def relay_child(args: argparse.Namespace) -> None:
    """The relay of the latency measurement, in a process of its own: ``ready`` once it owns its slots."""
    settings = settings_for(args.bootstrap, args.prefix)
    database = Database(args.url)
    relay = (FewerRoundTripsRelay if args.experiment else OutboxRelay)(
        database,
        connection=settings.connection(),
        publisher_config=settings.publisher_config(service="bench-relay"),
        config=RelayConfig(slots=args.slots, batch_size=args.batch_size, poll_interval_s=args.poll_interval),
    )
    phases = Phases().wrap(relay)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    started = time.perf_counter()
    task = asyncio.create_task(relay.run(stop))
    while relay.stats.slots_owned < args.slots and not task.done():  # noqa: ASYNC110 - a counter, no event
        await asyncio.sleep(0.01)
    print("ready", flush=True)
    await task
    seconds = time.perf_counter() - started
    await database.close()
    stats = asdict(relay.stats)
    print(json.dumps({"stats": stats, "phases": phases.as_dict(), "seconds": seconds}), flush=True)


async def consumer_child(args: argparse.Namespace) -> None:
    """A group-less consumer assigned every partition of the session topic: read time per event id."""
    settings = settings_for(args.bootstrap, args.prefix)
    options = raw_consumer_options(settings)
    fetching = ("max_partition_fetch_bytes", "fetch_max_bytes", "fetch_max_wait_ms", "fetch_min_bytes")
    consumer = AIOKafkaConsumer(
        **settings.connection().client_options(),
        **{name: options[name] for name in fetching if name in options},
        isolation_level=settings.consumer_config().isolation_level,
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    reads: dict[str, float] = {}
    duplicates = 0
    try:
        tps = [TopicPartition(settings.connection().topic(SESSION_TOPIC), p) for p in range(SESSION_PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        for tp in tps:
            await consumer.position(tp)
        print("ready", flush=True)
        deadline = time.monotonic() + args.timeout
        while len(reads) + duplicates < args.expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100, max_records=2000)
            now = time.time()
            for records in batch.values():
                for record in records:
                    event_id = next((v.decode() for k, v in record.headers if k == "event-id"), "")
                    if event_id in reads:
                        duplicates += 1
                    else:
                        reads[event_id] = now
    finally:
        await consumer.stop()
    await asyncio.to_thread(args.out.write_text, json.dumps({"reads": reads, "duplicates": duplicates}))


class _Child:
    """A child process of this module (``--child``) that prints ``ready`` when it is."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, kind: str, *argv: str) -> _Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.outbox", "--child", kind, *argv, stdout=asyncio.subprocess.PIPE
        )
        child = cls(process)
        assert process.stdout is not None  # noqa: S101 - PIPE was asked for
        line = await asyncio.wait_for(process.stdout.readline(), timeout=120)
        if line.strip() != b"ready":
            await child.stop()
            raise RuntimeError(f"bench.outbox {kind} child did not start: {line!r}")
        return child

    async def finish(self, timeout_s: float) -> bytes:
        """Wait for it to end by itself; its remaining output."""
        assert self.process.stdout is not None  # noqa: S101 - PIPE was asked for
        out = await asyncio.wait_for(self.process.stdout.read(), timeout=timeout_s)
        await self.process.wait()
        return out

    async def terminate(self, timeout_s: float = 60.0) -> bytes:
        """SIGTERM, then its remaining output."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await self.finish(timeout_s)

    async def stop(self) -> None:
        """Kill it if it still runs."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


# -- latency: the measuring side ------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _fresh(template: SessionCreated) -> SessionCreated:
    return template.model_copy(update={"metadata": EventMetadata.new("session:created")})


def _probes(slots: int) -> list[SessionCreated]:
    """One event per relay slot (by its key's bucket): every slot's producer works before the clock starts."""
    chosen: dict[int, SessionCreated] = {}
    for event in iter_events(10_000, seed=7):
        chosen.setdefault(bucket_of(event.session_id.encode()) % slots, event)
        if len(chosen) == slots:
            break
    return [_fresh(event) for event in chosen.values()]


async def _paced(
    rate: int, events: list[SessionCreated], one: Callable[[SessionCreated], Coroutine[Any, Any, None]]
) -> float:
    """A task per event, started when it is due (``rate``/s against a monotonic clock); the achieved rate."""
    tasks: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []

    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            failures.append(task.exception())  # type: ignore[arg-type]

    t0 = time.monotonic()
    sent = 0
    while sent < len(events):
        due = min(len(events), int((time.monotonic() - t0) * rate) + 1)
        while sent < due:
            task = asyncio.create_task(one(events[sent]))
            tasks.add(task)
            task.add_done_callback(done)
            sent += 1
        delay = t0 + sent / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    achieved = len(events) / (time.monotonic() - t0)
    while tasks:
        await asyncio.gather(*list(tasks), return_exceptions=True)
    if failures:
        raise RuntimeError(f"{len(failures)} writes failed; first: {failures[0]!r}")
    return achieved


async def _stop_relay(relay: _Child, into: dict[str, Any]) -> None:
    """SIGTERM the relay child; its last line (stats and phases) into ``into``."""
    try:
        output = await relay.terminate()
    finally:
        await relay.stop()
    for line in output.decode().splitlines():
        if line.startswith("{"):
            report = json.loads(line)
            stats = report["stats"]
            into |= {"sent": stats["sent"], "batches": stats["batches"], "errors": stats["errors"]}
            into["phases"] = report["phases"]


@dataclass
class LatencyRun:
    """What one latency measurement saw: start and end times per event id, and the reads."""

    starts: dict[str, float] = field(default_factory=dict)
    """The clock the latency runs from: the commit (outbox) or the publish call (direct)."""
    calls: dict[str, float] = field(default_factory=dict)
    """When the writer began its transaction / called publish."""
    acks: dict[str, float] = field(default_factory=dict)
    """Direct: when publish() returned (acknowledged)."""


class LatencyBench:
    """Outbox commit -> read and SDK publish -> read at one rate, each with its consumer subprocess."""

    def __init__(self, bootstrap: str, rate: int, seconds: float, relay: tuple[int, int], writer: str) -> None:
        self.bootstrap = bootstrap
        self.writer = writer
        self.rate = rate
        self.seconds = seconds
        self.slots, self.batch = relay
        self.count = int(rate * (seconds + WARMUP_S))
        self.templates = build_events(self.count, seed=rate)

    def _events(self) -> list[SessionCreated]:
        return [_fresh(template) for template in self.templates]

    async def _consumer(self, prefix: str, out: Path, expected: int) -> _Child:
        argv = ["--bootstrap", self.bootstrap, "--prefix", prefix, "--expected", str(expected), "--out", str(out)]
        return await _Child.start("consumer", *argv, "--timeout", str(self.count / self.rate + 120))

    def _sample(self, run: LatencyRun, out: Path, events: list[SessionCreated], achieved: float) -> Sample:
        data: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"reads": {}, "duplicates": 0}
        reads: dict[str, float] = data["reads"]
        warm = int(self.rate * WARMUP_S)
        measured = [str(e.metadata.event_id) for e in events[warm:]]
        latencies = sorted((reads[i] - run.starts[i]) * 1000 for i in measured if i in reads and i in run.starts)
        extra: dict[str, Any] = {
            "load1": round(os.getloadavg()[0], 2),  # the machine's 1-minute load at the end: others' work too
            "rate": self.rate,
            "achieved_rate": round(achieved, 1),
            "measured_events": len(measured),
            "read": len(latencies),
            "missing": len(measured) - len(latencies),
            "duplicates": data["duplicates"],
            "p50_ms": round(percentile(latencies, 0.50), 2),
            "p90_ms": round(percentile(latencies, 0.90), 2),
            "p99_ms": round(percentile(latencies, 0.99), 2),
            "max_ms": round(latencies[-1], 2) if latencies else float("nan"),
        }

        def spread(name: str, values: list[float]) -> None:
            values.sort()
            extra[f"{name}_p50_ms"] = round(percentile(values, 0.5), 2)
            extra[f"{name}_p99_ms"] = round(percentile(values, 0.99), 2)

        if run.calls:  # the outbox: the writer's transaction, and its whole path from BEGIN
            commits = sorted(run.starts.values())
            extra["commit_rate"] = round((len(commits) - 1) / (commits[-1] - commits[0]), 1) if commits else 0.0
            spread("transaction", [(run.starts[i] - run.calls[i]) * 1000 for i in measured if i in run.starts])
            spread("begin_to_read", [(reads[i] - run.calls[i]) * 1000 for i in measured if i in reads])
        if run.acks:  # direct: publish() call -> acknowledged
            spread("ack", [(run.acks[i] - run.starts[i]) * 1000 for i in measured if i in run.acks])
        return Sample(len(events), len(events) / achieved, extra)

    async def outbox(self, poll_s: float | None = None, *, experiment: bool = False) -> Sample:
        """Writers commit one event per transaction; the relay (a subprocess) sends; the consumer reads.

        ``poll_s`` (diagnostic): the outbox's triggers dropped (no NOTIFY in the writers' commits), the relay
        polling every ``poll_s`` instead.
        """
        settings = settings_for(self.bootstrap, unique_name("obl"))
        prefix = settings.connection().topic_prefix
        await apply_topics(settings.connection(), replication_factor=1)
        events, probes = self._events(), _probes(self.slots)
        run = LatencyRun()
        relay_report: dict[str, Any] = {}
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "reads.json"
            async with fresh_database() as url, contextlib.AsyncExitStack() as stack:
                database = Database(url)
                stack.push_async_callback(database.close)
                await database.migrate([OUTBOX_MIGRATION])
                if poll_s is not None:
                    await drop_outbox_triggers(database)
                consumer = await self._consumer(prefix, out, len(events) + len(probes))
                stack.push_async_callback(consumer.stop)
                argv = ["--url", url, "--bootstrap", self.bootstrap, "--prefix", prefix, "--slots", str(self.slots)]
                argv += ["--batch-size", str(self.batch)]
                argv += ["--poll-interval", str(poll_s or RelayConfig().poll_interval_s)]
                relay = await _Child.start("relay", *argv, *(["--experiment-relay"] if experiment else []))
                stack.push_async_callback(_stop_relay, relay, relay_report)
                outbox = Outbox(connection=settings.connection(), config=settings.publisher_config(service="bench"))
                async with database.begin() as conn:  # one event per slot, through before the clock starts
                    await outbox.add_many(conn, probes)
                deadline = time.monotonic() + 120
                while await backlog_of(database) and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
                write = await self._writer(
                    stack=stack, url=url, database=database, outbox=outbox, run=run, events=events
                )
                freeze_workload()
                achieved = await _paced(self.rate, events, write)
                await consumer.finish(timeout_s=120)
            sample = self._sample(run, out, events, achieved)
        await delete_topics(self.bootstrap, topic_names(settings))
        sample.extra |= {"writer": self.writer, "relay": relay_report}
        return sample

    async def _writer(
        self,
        *,
        stack: contextlib.AsyncExitStack,
        url: str,
        database: Database,
        outbox: Outbox,
        run: LatencyRun,
        events: list[SessionCreated],
    ) -> Callable[[SessionCreated], Coroutine[Any, Any, None]]:
        """One event per transaction: ``Outbox.add`` (SQLAlchemy), or its row through an asyncpg pool."""

        async def write_outbox(event: SessionCreated) -> None:
            event_id = str(event.metadata.event_id)
            run.calls[event_id] = time.time()
            async with database.begin() as conn:
                await outbox.add(conn, event)
            run.starts[event_id] = time.time()

        if self.writer == "outbox":
            return write_outbox
        statement, rows = await outbox_rows(outbox, events)
        pool = await asyncpg.create_pool(url, min_size=WRITER_POOL, max_size=WRITER_POOL)
        stack.push_async_callback(pool.close)

        async def write_row(event: SessionCreated) -> None:
            event_id = str(event.metadata.event_id)
            run.calls[event_id] = time.time()
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(statement, *rows[event_id], time.time())
            run.starts[event_id] = time.time()

        return write_row

    async def direct(self) -> Sample:
        """The same rate published directly: a task per event awaiting ``publisher.publish(event)``."""
        settings = settings_for(self.bootstrap, unique_name("obp"))
        prefix = settings.connection().topic_prefix
        await apply_topics(settings.connection(), replication_factor=1)
        events, probes = self._events(), _probes(self.slots)
        run = LatencyRun()
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "reads.json"
            consumer = await self._consumer(prefix, out, len(events) + len(probes))
            try:
                async with EventPublisher(
                    connection=settings.connection(), config=settings.publisher_config(service="bench")
                ) as publisher:
                    for probe in probes:
                        await publisher.publish(probe)
                    freeze_workload()

                    async def publish(event: SessionCreated) -> None:
                        event_id = str(event.metadata.event_id)
                        run.starts[event_id] = time.time()
                        await publisher.publish(event)
                        run.acks[event_id] = time.time()

                    achieved = await _paced(self.rate, events, publish)
                await consumer.finish(timeout_s=120)
            finally:
                await consumer.stop()
            sample = self._sample(run, out, events, achieved)
        await delete_topics(self.bootstrap, topic_names(settings))
        return sample


# -- reporting -------------------------------------------------------------------------------------


def _fmt_ratio(values: Sequence[float]) -> str:
    return f"{median(values):.2f}x" if values else "-"


def report_throughput(
    samples: dict[str, list[Sample]], configs: list[tuple[int, int]], events: int, rounds: int
) -> dict[str, Any]:
    """Print the throughput tables; the JSON payload."""
    rows = []
    for name, runs in samples.items():
        rates = [s.rate for s in runs]
        first = [float(s.extra["first_batch_s"]) for s in runs if "first_batch_s" in s.extra]
        fill = [float(s.extra["fill_rate"]) for s in runs if "fill_rate" in s.extra]
        there = {str(s.extra.get("all_there")) for s in runs}
        cpu_us = median([float(s.extra["cpu_us_per_event"]) for s in runs])
        cpu_pct = median([float(s.extra["cpu_percent"]) for s in runs])
        rows.append(
            (
                name,
                f"{median(rates):,.0f}",
                f"{min(rates):,.0f} - {max(rates):,.0f}",
                f"{cpu_us:.1f} ({cpu_pct:.0f} %)",
                f"{median(first):.2f}" if first else "-",
                f"{median(fill):,.0f}" if fill else "-",
                "yes" if there == {"yes"} else "NO",
            )
        )
    print_table(
        f"Outbox relay throughput, {events:,} session:created (6 partitions), medians of {rounds} interleaved rounds",
        ["variant", "events/s (median)", "range", "CPU us/event (%)", "first batch s", "fill rows/s", "all read back"],
        rows,
    )
    ratios: dict[str, list[float]] = {}
    for slots, batch in configs:
        ratios[f"{relay_label(slots, batch)} / {DIRECT}"] = per_round_ratio(samples, relay_label(slots, batch), DIRECT)
    slots, batch = configs[0]
    if experiment_label(slots, batch) in samples:
        ratios[f"{experiment_label(slots, batch)} / {DIRECT}"] = per_round_ratio(
            samples, experiment_label(slots, batch), DIRECT
        )
        ratios[f"{experiment_label(slots, batch)} / {relay_label(slots, batch)}"] = per_round_ratio(
            samples, experiment_label(slots, batch), relay_label(slots, batch)
        )
    ratios[f"{relay_label(slots, batch)} / {kafka_side_label(slots, batch)}"] = per_round_ratio(
        samples, relay_label(slots, batch), kafka_side_label(slots, batch)
    )
    print_table(
        "Ratios (median of per-round ratios)", ["ratio", "value"], [(k, _fmt_ratio(v)) for k, v in ratios.items()]
    )
    share_rows = []
    relays = [(name, s) for name, s in samples.items() if name.startswith("relay ")]
    for name, runs in relays:
        steps = sorted({step for s in runs for step in s.extra["phase_shares"]})
        shares = {step: median([float(s.extra["phase_shares"].get(step, 0.0)) for s in runs]) for step in steps}
        per_batch = median([s.extra["sent"] / max(1, s.extra["batches"]) for s in runs])
        share_rows.append(
            (
                name,
                *(
                    f"{100 * shares.get(step, 0.0):.0f} %"
                    for step in ("fetch", "send", "send_in_transaction", "delete")
                ),
                f"{per_batch:,.0f}",
            )
        )
    print_table(
        "Where the relay's slot tasks spend their time (share of slots x elapsed, medians)",
        ["relay", "fetch (SELECT)", "send (publish_records)", "send in Kafka transaction", "delete", "rows/batch"],
        share_rows,
    )
    return {
        "events": events,
        "rounds": rounds,
        "fill_chunk": FILL_CHUNK,
        "relay_configs": [{"slots": s, "batch_size": b} for s, b in configs],
        "variants": summarize(samples),
        "ratios": {name: {"median": median(values), "rounds": values} for name, values in ratios.items()},
    }


def report_latency(samples: dict[str, list[Sample]], rate: int, seconds: float, rounds: int) -> dict[str, Any]:
    """Print the latency table; the JSON payload."""
    rows, payload = [], {}
    keys = ("achieved_rate", "p50_ms", "p90_ms", "p99_ms", "max_ms")
    for name, runs in samples.items():
        stats = {key: median([float(s.extra[key]) for s in runs]) for key in keys}
        extra_keys = sorted({k for s in runs for k in s.extra if k.endswith(("_ms", "_rate")) and k not in keys})
        stats |= {key: median([float(s.extra[key]) for s in runs if key in s.extra]) for key in extra_keys}
        worst = max(float(s.extra["p99_ms"]) for s in runs)
        missing = max(int(s.extra["missing"]) for s in runs)
        duplicates = max(int(s.extra["duplicates"]) for s in runs)
        side = "transaction" if "transaction_p50_ms" in stats else "ack"
        rows.append(
            (
                f"{name} @ {rate:,}/s",
                f"{stats['achieved_rate']:,.0f}"
                + (f" ({stats['commit_rate']:,.0f})" if "commit_rate" in stats else ""),
                f"{stats['p50_ms']:.1f}",
                f"{stats['p90_ms']:.1f}",
                f"{stats['p99_ms']:.1f} (worst {worst:.1f})",
                f"{stats['max_ms']:.1f}",
                f"{side} {stats.get(f'{side}_p50_ms', math.nan):.1f} / {stats.get(f'{side}_p99_ms', math.nan):.1f}",
                f"{missing} / {duplicates}",
                f"{median([float(s.extra['load1']) for s in runs]):.1f}",
            )
        )
        payload[name] = {"median": stats, "worst_p99_ms": worst, "rounds": [s.extra for s in runs]}
    print_table(
        f"Latency (ms) at {rate:,} events/s, {seconds:g} s after {WARMUP_S:g} s warm-up, medians of {rounds} rounds",
        ["variant", "started/s (committed/s)", "p50", "p90", "p99", "max", "writer p50 / p99", "missing / dup", "load"],
        rows,
    )
    return {"rate": rate, "seconds": seconds, "warmup_seconds": WARMUP_S, "rounds": rounds, "variants": payload}


def targets_of(payload: dict[str, Any]) -> dict[str, float]:
    """The figures the issue's targets name (those measured in this run, with the default RelayConfig)."""
    found: dict[str, float] = {}
    default = relay_label(*DEFAULT_RELAY)
    if (throughput := payload.get("throughput")) and default in throughput["variants"]:
        found["relay_rate"] = throughput["variants"][default]["median_rate"]
    if (latency := payload.get("latency")) and latency["relay"] == default:
        found["p99_commit_to_published_ms"] = latency["variants"][LAT_OUTBOX]["median"]["p99_ms"]
    return found


# -- running ----------------------------------------------------------------------------------------


async def _profile_relay(bench: ThroughputBench, slots: int, batch: int) -> dict[str, Any]:
    """One more relay measurement (not in the figures) under pyinstrument: the whole thread, 0.5 ms samples."""
    from pyinstrument import Profiler  # noqa: PLC0415 - only with --profile

    from .profile import save_and_print  # noqa: PLC0415

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    sample = await bench.relay(slots, batch, profiler=profiler)
    console.print(f"profiled relay: {sample.rate:,.0f} events/s under the profiler; phases {sample.extra['phases']}")
    profile = save_and_print("outbox_relay", profiler, len(bench.events))
    return {"rate_under_profiler": sample.rate, "phases": sample.extra["phases"], **profile}


async def run(
    events: int,
    rounds: int,
    *,
    relay_configs: list[tuple[int, int]] | None = None,
    rate: int = DEFAULT_RATE,
    seconds: float = DEFAULT_SECONDS,
    throughput: bool = True,
    latency: bool = True,
    profile: bool = False,
    writer: str = WRITERS[0],
    poll_diagnostic: bool = False,
    experiment: bool = False,
) -> dict[str, Any]:
    """Run the outbox benchmark and write ``bench/results/outbox.json``."""
    configs = relay_configs or parse_relay_configs(DEFAULT_RELAY_CONFIGS)
    payload: dict[str, Any] = {"broker_engine": bench_broker(), "postgres": postgres_url().rsplit("@", 1)[-1]}
    with broker() as bootstrap:
        if throughput:
            console.print(f"building {events:,} events ...")
            bench = ThroughputBench(bootstrap, build_events(events))
            freeze_workload()
            variants: list[tuple[str, Callable[[], Awaitable[Sample]]]] = [
                (relay_label(s, b), lambda s=s, b=b: bench.relay(s, b))  # type: ignore[misc]
                for s, b in configs
            ]
            slots, batch = configs[0]
            if experiment:
                variants.append((experiment_label(slots, batch), lambda: bench.relay(slots, batch, experiment=True)))
            variants += [
                (DIRECT, bench.direct),
                (kafka_side_label(slots, batch), lambda: bench.kafka_side(slots, batch)),
            ]
            samples = await run_interleaved(variants, rounds)
            payload["throughput"] = report_throughput(samples, configs, events, rounds)
            payload["throughput"]["experiment"] = experiment
            if profile:
                payload["profile"] = await _profile_relay(bench, slots, batch)
        if latency:
            lat = LatencyBench(bootstrap, rate, seconds, configs[0], writer)
            lat_variants: list[tuple[str, Callable[[], Awaitable[Sample]]]] = [
                (LAT_OUTBOX, lat.outbox),
                (LAT_DIRECT, lat.direct),
            ]
            if experiment:
                lat_variants.append((LAT_EXPERIMENT, lambda: lat.outbox(experiment=True)))
            if poll_diagnostic:
                lat_variants.append((LAT_POLL, lambda: lat.outbox(poll_s=POLL_DIAGNOSTIC_S)))
            lat_samples = await run_interleaved(lat_variants, rounds)
            payload["latency"] = report_latency(lat_samples, rate, seconds, rounds) | {
                "writer": writer,
                "relay": relay_label(*configs[0]),
            }
    payload["targets"] = targets_of(payload)
    checks = []
    if "relay_rate" in payload["targets"]:
        value = payload["targets"]["relay_rate"]
        checks.append(("relay events/s (PostgreSQL)", f"{value:,.0f}", f">= {TARGET_RATE:,.0f}", value >= TARGET_RATE))
    if "p99_commit_to_published_ms" in payload["targets"]:
        value = payload["targets"]["p99_commit_to_published_ms"]
        checks.append(
            (
                f"p99 commit -> published @ {rate:,}/s",
                f"{value:.1f} ms",
                f"<= {TARGET_P99_MS:g} ms",
                value <= TARGET_P99_MS,
            )
        )
    print_table(
        f"Targets ({bench_broker()})",
        ["target", "measured", "limit", "met"],
        [(name, value, limit, "yes" if met else "NO") for name, value, limit, met in checks],
    )
    write_results("outbox", payload)
    return payload


def main() -> None:
    """Command line entry point (also the relay and consumer subprocesses, with ``--child``)."""
    parser = argparse.ArgumentParser(description="transactional outbox: relay throughput and commit -> read latency")
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="events per throughput measurement")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="interleaved rounds (>= 3 for medians)")
    parser.add_argument(
        "--relay-configs",
        default=DEFAULT_RELAY_CONFIGS,
        help="SLOTSxBATCH,... relay variants; the first is the target's",
    )
    parser.add_argument("--rate", type=int, default=DEFAULT_RATE, help="events/s of the latency measurement")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="seconds per latency measurement")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EVENTS:,} events, 5 s of latency, 1 round")
    parser.add_argument(
        "--writer",
        choices=WRITERS,
        default=WRITERS[0],
        help="latency writers: the outbox row through asyncpg, or Outbox.add",
    )
    parser.add_argument(
        "--poll-diagnostic",
        action="store_true",
        help=f"add the outbox latency without NOTIFY, the relay polling every {POLL_DIAGNOSTIC_S * 1000:g} ms",
    )
    parser.add_argument(
        "--experiment",
        action="store_true",
        help="add the relay with a batch's delete and the next fetch in one statement (a proposed change)",
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--profile", action="store_true", help="one more relay run under pyinstrument")
    parser.add_argument("--child", choices=("relay", "consumer"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--slots", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=500, help=argparse.SUPPRESS)
    parser.add_argument("--experiment-relay", dest="experiment", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--poll-interval", type=float, default=RelayConfig().poll_interval_s, help=argparse.SUPPRESS)
    parser.add_argument("--expected", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    if "--quick" in sys.argv:  # smaller defaults; options given explicitly still win
        parser.set_defaults(events=QUICK_EVENTS, seconds=5.0, rounds=1)
    args = parser.parse_args()
    if args.child == "relay":
        asyncio.run(relay_child(args))
        return
    if args.child == "consumer":
        asyncio.run(consumer_child(args))
        return
    asyncio.run(
        run(
            args.events,
            args.rounds,
            relay_configs=parse_relay_configs(args.relay_configs),
            rate=args.rate,
            seconds=args.seconds,
            throughput=not args.skip_throughput,
            latency=not args.skip_latency,
            profile=args.profile,
            writer=args.writer,
            poll_diagnostic=args.poll_diagnostic,
            experiment=args.experiment,
        )
    )


if __name__ == "__main__":
    main()
