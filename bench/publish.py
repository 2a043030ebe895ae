"""Publish throughput: raw aiokafka, the encode cost, our SDK, FastStream (and librdkafka), interleaved.

``python -m bench.publish [--events N] [--rounds R] [--no-confluent] [--only TEXT,...]``

Every I/O variant publishes the same N keyed ``session:created`` events to a fresh 3-partition topic
with the SDK's producer settings, waits for every acknowledgement, then reads the topic back to check
that each record sits on its key's murmur2 partition.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from confluent_kafka import Producer
from faststream.kafka import KafkaBroker, KafkaPublishMessage

from producers import EventPublisher
from schemas import AvroCodec, SessionCreated

from ._common import (
    Record,
    Sample,
    base_parser,
    broker,
    build_events,
    check_keys,
    console,
    create_topic,
    delete_topics,
    encoded_records,
    expected_partition,
    freeze_workload,
    median,
    per_round_ratio,
    print_table,
    raw_producer_options,
    run_interleaved,
    settings_for,
    summarize,
    unique_name,
    write_results,
)
from ._confluent import ConfluentProducerTransport, confluent_config

RAW_SEND = "aiokafka send() pre-encoded"
RAW_BATCH = "aiokafka send_batch() murmur2"
ENCODE = "encode only (codec.encode)"
PREPARE = "SDK prepare() only (no I/O)"
PREPARE_RAW = "SDK prepare() + aiokafka send() (diagnostic)"
SDK_SEND = "SDK send() + flush()"
SDK_MANY = "SDK publish_many(1000)"
SDK_AWAIT = "SDK await publish() x 256 tasks"
RAW_AWAIT = "aiokafka send_and_wait() x 256 tasks"
TASKS = 256
"""Concurrent publishers of the awaited variants: a web service with that many requests in flight."""
SDK_SINGLE = "SDK await publish() x 1 task"
RAW_SINGLE = "aiokafka send_and_wait() x 1 task"
SINGLE_EVENTS = 3000
"""Events of the one-task variants (each waits for its acknowledgement: about a millisecond apiece)."""
FS_SINGLE = "FastStream publish(no_confirm)"
FS_BATCH = "FastStream publish_batch()"
RDK_RAW = "librdkafka produce() pre-encoded"
SDK_RDK = "SDK send()+flush() on librdkafka"

Body = Callable[[str], Awaitable[float]]


class PublishBench:
    """The variants, sharing one broker and one pre-built workload."""

    latencies: list[float]
    cpu_s: float | None
    """CPU time of this process inside the timed part of the last variant, for the ones that measure it."""

    def __init__(self, bootstrap: str, events: list[SessionCreated]) -> None:
        self.bootstrap = bootstrap
        self.events = events
        self.records: list[Record] = encoded_records(events)
        self.settings = settings_for(bootstrap)
        json_size = sum(len(e.model_dump_json()) for e in events[:100]) / min(100, len(events))
        # FastStream's batch must fit in one aiokafka batch (max_batch_bytes); leave room for headers.
        self.fs_chunk = max(1, int(self.settings.publisher_config().max_batch_bytes * 0.8 / (json_size + 120)))

    async def io_variant(self, tag: str, body: Body, count: int | None = None) -> Sample:
        """Fresh topic, timed body (of ``count`` events, default all), key check, topic deleted."""
        count = len(self.events) if count is None else count
        prefix = unique_name(tag)
        topic = f"{prefix}session"
        await create_topic(self.bootstrap, topic)
        self.latencies = []
        self.cpu_s = None
        try:
            seconds = await body(prefix)
            check = await check_keys(self.bootstrap, topic, count)
        finally:
            await delete_topics(self.bootstrap, [topic])
        keys = "yes" if check.ok(count) else "no"
        extra: dict[str, Any] = {"keys": keys, "read": check.read, "misplaced": check.misplaced}
        if self.cpu_s is not None:  # this process's CPU inside the timed part: the rest of the time it waited
            extra["cpu_us"] = self.cpu_s / count * 1e6
            extra["busy"] = self.cpu_s / seconds
        if self.latencies:
            ordered = sorted(self.latencies)
            extra["p50_ms"] = ordered[len(ordered) // 2] * 1000
            extra["p99_ms"] = ordered[int(len(ordered) * 0.99)] * 1000
        return Sample(count, seconds, extra)

    # -- transport limits --------------------------------------------------------------

    async def raw_send(self, prefix: str) -> float:
        producer = AIOKafkaProducer(**raw_producer_options(self.settings))
        await producer.start()
        topic = f"{prefix}session"
        try:
            started = time.perf_counter()
            futures = [
                await producer.send(topic, value, key=key, headers=headers) for key, value, headers in self.records
            ]
            await asyncio.gather(*futures)
            return time.perf_counter() - started
        finally:
            await producer.stop()

    async def raw_batch(self, prefix: str) -> float:
        producer = AIOKafkaProducer(**raw_producer_options(self.settings))
        await producer.start()
        topic = f"{prefix}session"
        try:
            started = time.perf_counter()
            builders = [producer.create_batch() for _ in range(3)]
            futures: list[asyncio.Future[Any]] = []
            for key, value, headers in self.records:
                part = expected_partition(key)
                if builders[part].append(key=key, value=value, timestamp=None, headers=headers) is None:
                    futures.append(await producer.send_batch(builders[part], topic, partition=part))
                    builders[part] = producer.create_batch()
                    builders[part].append(key=key, value=value, timestamp=None, headers=headers)
            for part, builder in enumerate(builders):
                if builder.record_count():
                    futures.append(await producer.send_batch(builder, topic, partition=part))
            await asyncio.gather(*futures)
            return time.perf_counter() - started
        finally:
            await producer.stop()

    async def rdk_raw(self, prefix: str) -> float:
        producer = Producer(confluent_config(self.settings.connection(), self.settings.publisher_config()))
        topic = f"{prefix}session"
        failures: list[Any] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(err)

        started = time.perf_counter()
        for i, (key, value, headers) in enumerate(self.records):
            wire_headers: list[tuple[str, str | bytes | None]] = list(headers)
            while True:
                try:
                    producer.produce(topic, value, key, headers=wire_headers, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.001)
            if i % 1000 == 0:
                producer.poll(0)
        while len(producer) > 0:
            producer.poll(0)
            await asyncio.sleep(0.001)
        elapsed = time.perf_counter() - started
        if failures:
            raise RuntimeError(f"{len(failures)} librdkafka deliveries failed: {failures[0]}")
        return elapsed

    async def prepare_raw(self, prefix: str) -> float:
        """What the SDK would reach with its encoding and no per-record bookkeeping of its own."""
        settings = settings_for(self.bootstrap, prefix)
        publisher = EventPublisher(connection=settings.connection(), config=settings.publisher_config(service="bench"))
        producer = AIOKafkaProducer(**raw_producer_options(self.settings))
        await producer.start()
        try:
            started = time.perf_counter()
            futures = []
            for event in self.events:
                record = publisher.prepare(event)
                futures.append(await producer.send(record.topic, record.value, key=record.key, headers=record.headers))
            await asyncio.gather(*futures)
            return time.perf_counter() - started
        finally:
            await producer.stop()

    # -- CPU only ----------------------------------------------------------------------

    async def encode_only(self) -> Sample:
        codec = AvroCodec()
        started = time.perf_counter()
        for event in self.events:
            codec.encode(event)
        return Sample(len(self.events), time.perf_counter() - started)

    async def prepare_only(self) -> Sample:
        publisher = EventPublisher(connection=self.settings.connection(), config=self.settings.publisher_config())
        started = time.perf_counter()
        for event in self.events:
            publisher.prepare(event)
        return Sample(len(self.events), time.perf_counter() - started)

    # -- SDK -------------------------------------------------------------------------

    def _publisher(self, prefix: str, *, librdkafka: bool = False) -> EventPublisher:
        settings = settings_for(self.bootstrap, prefix)
        connection, config = settings.connection(), settings.publisher_config(service="bench")
        transport = ConfluentProducerTransport(connection, config) if librdkafka else None
        return EventPublisher(connection=connection, config=config, transport=transport)

    async def sdk_send(self, prefix: str, *, librdkafka: bool = False) -> float:
        async with self._publisher(prefix, librdkafka=librdkafka) as publisher:
            started, cpu = time.perf_counter(), time.process_time()
            for event in self.events:
                await publisher.send(event)
            await publisher.flush()
            self.cpu_s = time.process_time() - cpu
            return time.perf_counter() - started

    async def sdk_rdk(self, prefix: str) -> float:
        return await self.sdk_send(prefix, librdkafka=True)

    async def _in_tasks(self, publish_one: Callable[[int], Awaitable[object]]) -> float:
        """``publish_one(i)`` for every event, from ``TASKS`` tasks each awaiting its own calls in turn."""

        async def worker(first: int) -> None:
            for i in range(first, len(self.events), TASKS):
                await publish_one(i)

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(n) for n in range(TASKS)))
        self.cpu_s = time.process_time() - cpu
        return time.perf_counter() - started

    async def sdk_await(self, prefix: str) -> float:
        async with self._publisher(prefix) as publisher:
            return await self._in_tasks(lambda i: publisher.publish(self.events[i]))

    async def raw_await(self, prefix: str) -> float:
        return await self._raw_awaited(prefix, self._in_tasks)

    async def sdk_single(self, prefix: str) -> float:
        async with self._publisher(prefix) as publisher:
            return await self._one_by_one(lambda i: publisher.publish(self.events[i]))

    async def raw_single(self, prefix: str) -> float:
        return await self._raw_awaited(prefix, self._one_by_one)

    async def _raw_awaited(
        self, prefix: str, driver: Callable[[Callable[[int], Awaitable[object]]], Awaitable[float]]
    ) -> float:
        """aiokafka's ``send_and_wait`` of the pre-encoded records, called by ``driver`` (tasks or one by one)."""
        producer = AIOKafkaProducer(**raw_producer_options(self.settings))
        await producer.start()
        topic = f"{prefix}session"
        try:

            async def one(i: int) -> object:
                key, value, headers = self.records[i]
                return await producer.send_and_wait(topic, value, key=key, headers=headers)

            return await driver(one)
        finally:
            await producer.stop()

    async def _one_by_one(self, publish_one: Callable[[int], Awaitable[object]]) -> float:
        """One task awaiting each of the first ``SINGLE_EVENTS`` publishes in turn; each call's time is kept."""
        clock = time.perf_counter
        started = clock()
        for i in range(SINGLE_EVENTS):
            began = clock()
            await publish_one(i)
            self.latencies.append(clock() - began)
        return clock() - started

    async def sdk_many(self, prefix: str) -> float:
        async with self._publisher(prefix) as publisher:
            started = time.perf_counter()
            for i in range(0, len(self.events), 1000):
                await publisher.publish_many(list(self.events[i : i + 1000]))
            return time.perf_counter() - started

    # -- FastStream --------------------------------------------------------------------

    def _faststream(self) -> KafkaBroker:
        config = self.settings.publisher_config()
        return KafkaBroker(
            self.bootstrap,
            acks=config.acks,
            enable_idempotence=config.enable_idempotence,
            linger_ms=config.linger_ms,
            max_batch_size=config.max_batch_bytes,
            max_request_size=config.max_message_bytes + 4096,
            request_timeout_ms=int(config.delivery_timeout_s * 1000),
            logger=None,
        )

    async def fs_single(self, prefix: str) -> float:
        fs = self._faststream()
        await fs.start()
        topic = f"{prefix}session"
        try:
            started = time.perf_counter()
            futures = [
                await fs.publish(event, topic, key=event.session_id.encode(), no_confirm=True) for event in self.events
            ]
            await asyncio.gather(*futures)
            return time.perf_counter() - started
        finally:
            await fs.stop()

    async def fs_batch(self, prefix: str) -> float:
        fs = self._faststream()
        await fs.start()
        topic = f"{prefix}session"
        try:
            started = time.perf_counter()
            futures = []
            for i in range(0, len(self.events), self.fs_chunk):
                chunk = [KafkaPublishMessage(e, key=e.session_id.encode()) for e in self.events[i : i + self.fs_chunk]]
                futures.append(await fs.publish_batch(*chunk, topic=topic, no_confirm=True))
            await asyncio.gather(*futures)
            return time.perf_counter() - started
        finally:
            await fs.stop()


def _fmt_ratio(values: Sequence[float]) -> str:
    return f"{median(values):.2f}x" if values else "-"


def report(samples: dict[str, list[Sample]], bench: PublishBench, rounds: int) -> dict[str, Any]:
    """Print the table and return the JSON payload (the ratios whose two variants ran)."""
    ratios: dict[str, list[float]] = {}

    def ratio(num: str, den: str) -> None:
        if num in samples and den in samples:
            ratios[f"{num} / {den}"] = per_round_ratio(samples, num, den)

    if RAW_SEND in samples and ENCODE in samples:
        pairs = zip(samples[RAW_SEND], samples[ENCODE], strict=True)
        limit_rounds = [1 / (1 / a.rate + 1 / b.rate) for a, b in pairs]
        samples = {**samples, "composed limit 1/(t_send + t_encode)": [Sample(1, 1 / rate) for rate in limit_rounds]}
        for sdk in (SDK_SEND, SDK_RDK):
            if sdk in samples:
                against = zip(samples[sdk], limit_rounds, strict=True)
                ratios[f"{sdk} / composed limit"] = [s.rate / lim for s, lim in against]
    for sdk in (SDK_SEND, SDK_RDK):
        for other in (FS_SINGLE, FS_BATCH, RAW_SEND):
            ratio(sdk, other)
    ratio(SDK_AWAIT, SDK_SEND)
    ratio(SDK_AWAIT, RAW_AWAIT)
    ratio(SDK_MANY, SDK_SEND)
    ratio(SDK_SINGLE, RAW_SINGLE)
    # The SDK's Python work per event with no I/O at all, against FastStream's whole batch publish: below
    # 1.3 no transport can bring the SDK to 1.3x FastStream's batch publish.
    ratio(PREPARE, FS_BATCH)
    rows = []
    for name, runs in samples.items():
        rates = [s.rate for s in runs]
        keys = {s.extra["keys"] for s in runs if "keys" in s.extra}
        misplaced = median([float(s.extra.get("misplaced", 0)) for s in runs])
        key_text = "-" if not keys else ("yes" if keys == {"yes"} else f"no ({misplaced:,.0f} misplaced)")
        rows.append((name, f"{median(rates):,.0f}", f"{min(rates):,.0f} - {max(rates):,.0f}", key_text))
    print_table(
        f"Publish, {len(bench.events):,} keyed session:created, 3 partitions, medians of {rounds} interleaved rounds",
        ["variant", "msgs/s (median)", "range", "keys respected"],
        rows,
    )
    print_table(
        "Ratios (median of per-round ratios)", ["ratio", "value"], [(k, _fmt_ratio(v)) for k, v in ratios.items()]
    )
    per_call = [
        (name, f"{median([s.extra['p50_ms'] for s in runs]):.2f}", f"{median([s.extra['p99_ms'] for s in runs]):.2f}")
        for name, runs in samples.items()
        if runs and "p50_ms" in runs[0].extra
    ]
    if per_call:
        print_table(
            f"One task awaiting each publish ({SINGLE_EVENTS:,} events): time per call, medians of the rounds",
            ["variant", "p50 ms", "p99 ms"],
            per_call,
        )
    cpu = [
        (name, f"{median([s.extra['cpu_us'] for s in runs]):.1f}", f"{median([s.extra['busy'] for s in runs]):.0%}")
        for name, runs in samples.items()
        if runs and "cpu_us" in runs[0].extra
    ]
    if cpu:  # an awaited path is bounded by its CPU per event plus the share of time the loop waits
        print_table(
            "This process's CPU per event and busy share of the timed part, medians of the rounds",
            ["variant", "CPU µs/event", "busy"],
            cpu,
        )
    return {
        "events": len(bench.events),
        "rounds": rounds,
        "faststream_batch_chunk": bench.fs_chunk,
        "variants": summarize(samples),
        "ratios": {name: {"median": median(values), "rounds": values} for name, values in ratios.items()},
    }


async def run(events: int, rounds: int, *, librdkafka: bool = True, only: Sequence[str] = ()) -> dict[str, Any]:
    """Run the publish benchmark and write ``bench/results/publish.json`` (``only``: the variants whose name
    contains one of these pieces, case-insensitive; then the file is ``publish-partial.json``)."""
    with broker() as bootstrap:
        console.print(f"building {events:,} events ...")
        bench = PublishBench(bootstrap, build_events(events))
        freeze_workload()
        variants: list[tuple[str, Callable[[], Awaitable[Sample]]]] = [
            (RAW_SEND, lambda: bench.io_variant("raw", bench.raw_send)),
            (RAW_BATCH, lambda: bench.io_variant("rawb", bench.raw_batch)),
            (ENCODE, bench.encode_only),
            (PREPARE, bench.prepare_only),
            (PREPARE_RAW, lambda: bench.io_variant("prep", bench.prepare_raw)),
            (SDK_SEND, lambda: bench.io_variant("sdk", bench.sdk_send)),
            (SDK_MANY, lambda: bench.io_variant("sdkm", bench.sdk_many)),
            (SDK_AWAIT, lambda: bench.io_variant("sdka", bench.sdk_await)),
            (RAW_AWAIT, lambda: bench.io_variant("rawa", bench.raw_await)),
            (SDK_SINGLE, lambda: bench.io_variant("sdk1", bench.sdk_single, SINGLE_EVENTS)),
            (RAW_SINGLE, lambda: bench.io_variant("raw1", bench.raw_single, SINGLE_EVENTS)),
            (FS_SINGLE, lambda: bench.io_variant("fs", bench.fs_single)),
            (FS_BATCH, lambda: bench.io_variant("fsb", bench.fs_batch)),
        ]
        if librdkafka:
            variants += [
                (RDK_RAW, lambda: bench.io_variant("rdk", bench.rdk_raw)),
                (SDK_RDK, lambda: bench.io_variant("sdkrdk", bench.sdk_rdk)),
            ]
        if only:
            variants = [(name, body) for name, body in variants if any(p.lower() in name.lower() for p in only)]
        samples = await run_interleaved(variants, rounds)
        payload = report(samples, bench, rounds)
    write_results("publish-partial" if only else "publish", payload)
    return payload


def main() -> None:
    """Command line entry point."""
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "publish benchmark")
    parser.add_argument("--no-confluent", action="store_true", help="skip the librdkafka variants")
    parser.add_argument("--only", default="", help="comma-separated pieces of variant names to run (default: all)")
    args = parser.parse_args()
    only = [piece.strip() for piece in args.only.split(",") if piece.strip()]
    asyncio.run(run(args.events, args.rounds, librdkafka=not args.no_confluent, only=only))


if __name__ == "__main__":
    main()
