"""Consume throughput: raw aiokafka, our runtime and FastStream over the same backlog, interleaved.

``python -m bench.consume [--events N] [--rounds R] [--only TEXT,...]``

Two backlogs of the same N keyed ``session:created`` events are written once: Avro (the SDK's wire
format, read by raw aiokafka and the runtime) and JSON (FastStream's own format). Every measurement
is a fresh consumer group reading its backlog from the start; the clock runs from the first record
handed to processing until, for the at-least-once variants, the group's committed offsets cover all N
records (a commit still to come is part of the cost: polled every 5 ms), and for FastStream's default
(auto-commit, at-most-once) to the last record processed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from prometheus_client import CollectorRegistry

from consumers import ConsumerGroup, HandlerContext, HandlerScope, RuntimeMetrics, group_id, run_groups
from producers import EventPublisher, reset_cause, set_cause
from schemas import AvroCodec, SessionCreated

from ._common import (
    CommitWatch,
    Sample,
    base_parser,
    bench_broker,
    broker,
    build_events,
    committed_total,
    console,
    create_topic,
    delete_topics,
    encoded_records,
    fetch_options,
    median,
    per_round_ratio,
    print_table,
    produce_backlog,
    raw_consumer_options,
    run_interleaved,
    settings_for,
    summarize,
    unique_name,
    write_results,
)

RAW = "aiokafka getmany+decode+validate+commit/batch"
FLOOR = "same + per-record handler call and bookkeeping (diagnostic)"
RUNTIME = "runtime, no-op handler (at-least-once)"
FS_DEFAULT = "FastStream default (ack first, at-most-once)"
FS_ACK = "FastStream ack after each message"
FS_BATCH = "FastStream batch handler, ack per batch"


class _Progress:
    """Counts handled records; the clock runs from the first handler call to the one reaching N.

    The records of the first call were decoded before the clock started, so they are not counted:
    the rate is (N - first call's records) / (last - first).
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.excluded = 0
        self.first = 0.0
        self.last = 0.0
        self.done = asyncio.Event()

    def add(self, n: int = 1) -> None:
        if self.count == 0:
            self.first = time.perf_counter()
            self.excluded = n
        self.count += n
        if self.count >= self.expected and not self.done.is_set():
            self.last = time.perf_counter()
            self.done.set()

    async def wait(self, what: str) -> float:
        timeout = max(300.0, self.expected / 200)  # FastStream acking each message runs at ~1 000/s here
        try:
            await asyncio.wait_for(self.done.wait(), timeout=timeout)
        except TimeoutError:
            raise RuntimeError(f"{what}: {self.count:,} of {self.expected:,} records after {timeout:.0f} s") from None
        return self.last - self.first


class ConsumeBench:
    """The variants, reading two backlogs written once."""

    def __init__(self, bootstrap: str, events: int) -> None:
        self.bootstrap = bootstrap
        self.events = events
        self.avro_prefix = unique_name("consume")
        self.json_prefix = unique_name("consume-json")
        self.avro_topic = f"{self.avro_prefix}session"
        self.json_topic = f"{self.json_prefix}session"
        self.settings = settings_for(bootstrap, self.avro_prefix)

    async def setup(self) -> None:
        console.print(f"building {self.events:,} events and writing the Avro and JSON backlogs ...")
        workload = build_events(self.events)
        for topic, json_body in ((self.avro_topic, False), (self.json_topic, True)):
            await create_topic(self.bootstrap, topic)
            await produce_backlog(self.bootstrap, topic, encoded_records(workload, json_body=json_body), self.events)

    async def teardown(self) -> None:
        await delete_topics(self.bootstrap, [self.avro_topic, self.json_topic])

    async def _checked(self, group: str | None, topic: str, seconds: float, progress: _Progress) -> Sample:
        extra: dict[str, Any] = {"handled": progress.count}
        if group is not None:
            extra["committed"] = committed = await committed_total(self.bootstrap, group, topic)
            if committed < self.events:
                extra["LOSS_RISK"] = "committed offsets do not cover every record"
        return Sample(self.events - progress.excluded, seconds, extra)

    async def raw(self) -> Sample:
        return await self._raw_loop(per_record_handler=False)

    async def floor(self) -> Sample:
        """The raw loop plus what every per-record handler call costs the runtime, and nothing else.

        A ``HandlerContext``, the cause set and reset around an awaited no-op handler, its latency
        observed (which also counts it as handled): the runtime's work per record without its dispatch
        (queues, ordering, pauses, watermarks). It tells what share of the gap to raw is the
        per-record handler contract itself.
        """
        return await self._raw_loop(per_record_handler=True)

    async def _raw_loop(self, *, per_record_handler: bool) -> Sample:
        metrics = RuntimeMetrics(CollectorRegistry())
        latency = metrics.latency.labels("floor", "x")  # its counts are the runtime's handled counter
        scope = HandlerScope("floor", EventPublisher())  # never started: the handler publishes nothing

        async def noop(event: object, ctx: HandlerContext) -> None:
            return None

        group = unique_name("raw").rstrip("-")
        consumer = AIOKafkaConsumer(self.avro_topic, group_id=group, **raw_consumer_options(self.settings))
        await consumer.start()
        codec = AvroCodec()
        progress = _Progress(self.events)
        try:
            started = 0.0
            deadline = time.monotonic() + max(120.0, self.events / 1000)
            while progress.count < self.events and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200, max_records=2000)
                if batch and not started:
                    started = time.perf_counter()
                offsets = {}
                for tp, records in batch.items():
                    for record in records:
                        event = codec.decode(record.value)  # decode + validate into the model
                        if per_record_handler:
                            context = HandlerContext.for_record(scope, event, record, 1)
                            cause = set_cause(event)
                            begun = time.perf_counter()
                            try:
                                await noop(event, context)
                            finally:
                                reset_cause(cause)
                            latency.observe(time.perf_counter() - begun)
                    offsets[tp] = records[-1].offset + 1
                    progress.count += len(records)
                if offsets:
                    await consumer.commit(offsets)
            seconds = time.perf_counter() - started
        finally:
            await consumer.stop()
        return await self._checked(group, self.avro_topic, seconds, progress)

    async def runtime(self) -> Sample:
        progress = _Progress(self.events)
        group = ConsumerGroup(f"rt-{uuid.uuid4().hex[:8]}")

        @group.handler(SessionCreated)
        async def noop(event: SessionCreated, ctx: HandlerContext) -> None:
            progress.add()

        stop = asyncio.Event()
        settings = self.settings
        gid = group_id(settings.connection(), group)
        watch = CommitWatch(self.bootstrap)
        await watch.__aenter__()
        task = asyncio.create_task(
            run_groups(
                [group],
                connection=settings.connection(),
                publisher_config=settings.publisher_config(service="bench"),
                consumer_config=settings.consumer_config(),
                runtime_config=settings.runtime_config(),
                stop=stop,
            )
        )
        try:
            await progress.wait(RUNTIME)
            seconds = await watch.covered_at(gid, self.avro_topic, self.events) - progress.first
        finally:
            await watch.__aexit__()
            stop.set()
            await task
        return await self._checked(gid, self.avro_topic, seconds, progress)

    async def faststream(self, policy: AckPolicy | None, *, batch: bool = False) -> Sample:
        progress = _Progress(self.events)
        group = unique_name("fs").rstrip("-")
        fs = KafkaBroker(self.bootstrap, logger=None)
        # The runtime's group and fetch settings; everything else is FastStream's default.
        options: dict[str, Any] = {"group_id": group, "auto_offset_reset": "earliest", **fetch_options(self.settings)}
        if policy is not None:
            options["ack_policy"] = policy
        if batch:

            async def handle_batch(body: list[SessionCreated]) -> None:
                progress.add(len(body))

            fs.subscriber(self.json_topic, batch=True, **options)(handle_batch)
        else:

            async def handle(body: SessionCreated) -> None:
                progress.add()

            fs.subscriber(self.json_topic, **options)(handle)
        async with CommitWatch(self.bootstrap) as watch:
            await fs.start()
            try:
                seconds = await progress.wait("FastStream")
                if policy is not None:  # at least once: until its commits cover every record
                    seconds = await watch.covered_at(group, self.json_topic, self.events) - progress.first
            finally:
                await fs.stop()
        # The default (auto-commit, ack first) promises nothing about commits: not checked.
        return await self._checked(None if policy is None else group, self.json_topic, seconds, progress)


def report(samples: dict[str, list[Sample]], events: int, rounds: int) -> dict[str, Any]:
    """Print the tables and return the JSON payload."""
    pairs = {
        "runtime / raw aiokafka (same decode, validate, commit work)": (RUNTIME, RAW),
        "raw + per-record handler work / raw aiokafka (diagnostic)": (FLOOR, RAW),
        "runtime / raw + per-record handler work (diagnostic)": (RUNTIME, FLOOR),
        "runtime / FastStream ack after each message": (RUNTIME, FS_ACK),
        "runtime / FastStream batch, ack per batch": (RUNTIME, FS_BATCH),
        "runtime / FastStream default (at-most-once)": (RUNTIME, FS_DEFAULT),
    }
    ratios = {name: per_round_ratio(samples, a, b) for name, (a, b) in pairs.items() if {a, b} <= samples.keys()}
    at_least_once = [samples[name] for name in (FS_ACK, FS_BATCH) if name in samples]
    if RUNTIME in samples and at_least_once:
        best_fs = [max(s.rate for s in runs) for runs in zip(*at_least_once, strict=True)]
        ratios["runtime / FastStream best at-least-once mode"] = [
            s.rate / best for s, best in zip(samples[RUNTIME], best_fs, strict=True)
        ]
    rows = []
    for name, runs in samples.items():
        rates = [s.rate for s in runs]
        covered = {s.extra.get("committed", events) >= events for s in runs}
        commit_text = "n/a (auto-commit)" if name == FS_DEFAULT else ("yes" if covered == {True} else "NO")
        rows.append((name, f"{median(rates):,.0f}", f"{min(rates):,.0f} - {max(rates):,.0f}", commit_text))
    print_table(
        f"Consume, {events:,} keyed session:created backlog, 3 partitions, medians of {rounds} interleaved rounds",
        ["variant", "msgs/s (median)", "range", "commits cover all"],
        rows,
    )
    print_table(
        "Ratios (median of per-round ratios)",
        ["ratio", "value"],
        [(k, f"{median(v):.2f}x") for k, v in ratios.items()],
    )
    return {
        "events": events,
        "rounds": rounds,
        "variants": summarize(samples),
        "ratios": {name: {"median": median(values), "rounds": values} for name, values in ratios.items()},
    }


async def run(events: int, rounds: int, *, only: Sequence[str] = ()) -> dict[str, Any]:
    """Run the consume benchmark and write ``bench/results/consume.json`` (``only``: the variants whose name
    holds one of these pieces, written to ``consume-partial.json`` instead)."""
    with broker() as bootstrap:
        bench = ConsumeBench(bootstrap, events)
        await bench.setup()
        variants: list[tuple[str, Callable[[], Awaitable[Sample]]]] = [
            (RAW, bench.raw),
            (FLOOR, bench.floor),
            (RUNTIME, bench.runtime),
            (FS_DEFAULT, lambda: bench.faststream(None)),
            (FS_ACK, lambda: bench.faststream(AckPolicy.ACK)),
            (FS_BATCH, lambda: bench.faststream(AckPolicy.ACK, batch=True)),
        ]
        if only:
            variants = [(name, body) for name, body in variants if any(p.lower() in name.lower() for p in only)]
        if bench_broker() == "kafka" and not only:
            # About 150 records/s on Apache Kafka here (75,372 of 100,000 in 500 s): 11 minutes a round, and never
            # FastStream's best at-least-once mode (its batch handler is about 100 times faster).
            console.print(f"[dim]{FS_ACK}: left out on Apache Kafka (about 150 records/s)[/dim]")
            variants = [(name, body) for name, body in variants if name != FS_ACK]
        try:
            samples = await run_interleaved(variants, rounds)
        finally:
            await bench.teardown()
        payload = report(samples, events, rounds)
    write_results("consume-partial" if only else "consume", payload)
    return payload


def main() -> None:
    """Command line entry point."""
    parser = base_parser("consume throughput: raw aiokafka, the runtime and FastStream")
    parser.add_argument("--only", default="", help="comma-separated pieces of variant names to run (default: all)")
    args = parser.parse_args()
    only = [piece.strip() for piece in args.only.split(",") if piece.strip()]
    asyncio.run(run(args.events, args.rounds, only=only))


if __name__ == "__main__":
    main()
