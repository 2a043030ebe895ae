"""Latency publish -> handler start at fixed rates: our SDK + runtime, and raw aiokafka, interleaved.

``python -m bench.latency [--seconds S] [--rates 1000,10000] [--rounds R]``

The consumer runs in a subprocess (as a separate service would); this process publishes at a fixed
rate, scheduled against a monotonic clock. Each event's ``metadata.occurred_at`` is its *scheduled*
send time, so a producer that falls behind shows up as latency (no coordinated omission). The
handler records ``now - occurred_at`` when it starts. The first half second of events is warm-up.

``--diagnose`` adds the mixed pairs (SDK producer -> raw consumer, raw producer -> runtime) to tell
which side adds latency. A third variant is an experiment: the SDK lingering 1 ms instead of its
default 5 ms before it ships a partition's batch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import ConsumerRebalanceListener

from consumers import ConsumerGroup, HandlerContext, run_groups
from producers import EventPublisher
from schemas import AvroCodec, EventMetadata, SessionCreated

from ._common import (
    DEFAULT_ROUNDS,
    Sample,
    base_parser,
    broker,
    build_events,
    console,
    create_topic,
    delete_topics,
    freeze_workload,
    median,
    print_table,
    raw_consumer_options,
    raw_producer_options,
    settings_for,
    unique_name,
    write_results,
)

WARMUP_S = 0.5
EXPERIMENT_LINGER_MS = 1
VARIANTS = ("sdk", "aiokafka", "sdk-linger1")
DIAGNOSTIC = ("sdk-to-aiokafka", "aiokafka-to-runtime")
LABELS = {
    "sdk": "SDK send() -> runtime handler",
    "aiokafka": "aiokafka send() -> getmany loop",
    "sdk-linger1": f"SDK (linger_ms={EXPERIMENT_LINGER_MS}) -> runtime handler (experiment)",
    "sdk-to-aiokafka": "SDK send() -> getmany loop (diagnostic)",
    "aiokafka-to-runtime": "aiokafka send() -> runtime handler (diagnostic)",
}
# variant -> (producer, consumer)
ROUTES = {
    "sdk": ("sdk", "runtime"),
    "aiokafka": ("aiokafka", "aiokafka"),
    "sdk-linger1": ("sdk", "runtime"),
    "sdk-to-aiokafka": ("sdk", "aiokafka"),
    "aiokafka-to-runtime": ("aiokafka", "runtime"),
}


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _latency_ms(event: SessionCreated) -> float:
    return (time.time() - event.metadata.occurred_at.timestamp()) * 1000


# -- consumer side (subprocess) ------------------------------------------------------------


class _Ready(ConsumerRebalanceListener):  # type: ignore[misc]
    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        _ready()


def _ready() -> None:
    """Tell the producer to start, after one full collection of what starting left (both consumers alike).

    A fresh process's first full collection after its imports traverses about 100 000 objects (47-68 ms here)
    and comes after ten young-generation passes: within the 10-s window of whichever consumer allocates more per
    record (the runtime, 4 rounds of 4), outside the raw loop's. A service that has run a while has paid it;
    collecting once before the clock starts measures the steady state for both.
    """
    gc.collect()
    print("ready", flush=True)


async def consume(variant: str, *, bootstrap: str, prefix: str, expected: int, out: Path, timeout_s: float) -> None:
    """Join a fresh group, print ``ready``, record handler-start latencies until ``expected`` arrived."""
    latencies: list[float] = []
    done = asyncio.Event()
    settings = settings_for(bootstrap, prefix)
    consumer_config = settings.consumer_config()
    if ROUTES[variant][1] == "runtime":
        group = ConsumerGroup(f"lat-{uuid.uuid4().hex[:8]}")

        @group.handler(SessionCreated)
        async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
            latencies.append(_latency_ms(event))
            if len(latencies) >= expected:
                done.set()

        started, stop = asyncio.Event(), asyncio.Event()
        runner = asyncio.create_task(
            run_groups(
                [group],
                connection=settings.connection(),
                publisher_config=settings.publisher_config(service="bench-latency"),
                consumer_config=consumer_config,
                runtime_config=settings.runtime_config(),
                stop=stop,
                started=started,
            )
        )
        await started.wait()
        _ready()
        with contextlib.suppress(TimeoutError):  # report what arrived
            await asyncio.wait_for(done.wait(), timeout=timeout_s)
        stop.set()
        await runner
    else:
        codec = AvroCodec()
        consumer = AIOKafkaConsumer(group_id=unique_name("lat").rstrip("-"), **raw_consumer_options(settings))
        consumer.subscribe([f"{prefix}session"], listener=_Ready())
        await consumer.start()
        deadline = time.monotonic() + timeout_s
        try:
            while len(latencies) < expected and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=100, max_records=2000)
                offsets = {}
                for tp, records in batch.items():
                    for record in records:
                        event = codec.decode(record.value)
                        assert isinstance(event, SessionCreated)  # noqa: S101 - the topic holds only these
                        latencies.append(_latency_ms(event))
                    offsets[tp] = records[-1].offset + 1
                if offsets:
                    await consumer.commit(offsets)
        finally:
            await consumer.stop()
    await asyncio.to_thread(out.write_text, json.dumps(latencies))


# -- producer side ---------------------------------------------------------------------------


async def _paced(rate: int, count: int, send: Callable[[SessionCreated], Awaitable[None]]) -> float:
    """Send ``count`` events at ``rate``/s; each carries its scheduled time. Returns the achieved rate.

    The events are built before the clock starts; only their metadata (id, scheduled time) is made in the loop.
    """
    templates = iter(build_events(count, seed=rate))
    freeze_workload()
    t0, wall0 = time.monotonic(), time.time()
    sent = 0
    while sent < count:
        due = min(count, int((time.monotonic() - t0) * rate) + 1)
        while sent < due:
            scheduled = datetime.fromtimestamp(wall0 + sent / rate, UTC)
            meta = EventMetadata(event_id=uuid.uuid4(), event_type="session:created", occurred_at=scheduled)
            await send(next(templates).model_copy(update={"metadata": meta}))
            sent += 1
        delay = t0 + sent / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    return count / (time.monotonic() - t0)


async def measure(variant: str, bootstrap: str, rate: int, count: int) -> Sample:
    """One measurement: fresh topic, consumer subprocess, paced producer, percentiles."""
    prefix = unique_name("lat")
    await create_topic(bootstrap, f"{prefix}session")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "latencies.json"
        argv = ["-m", "bench.latency", "--consumer", variant, "--bootstrap", bootstrap, "--prefix", prefix]
        argv += ["--expected", str(count), "--out", str(out), "--timeout", str(count / rate + 60)]
        child = await asyncio.create_subprocess_exec(sys.executable, *argv, stdout=asyncio.subprocess.PIPE)
        try:
            assert child.stdout is not None  # noqa: S101 - PIPE was asked for
            line = await asyncio.wait_for(child.stdout.readline(), timeout=120)
            if line.strip() != b"ready":
                raise RuntimeError(f"latency consumer did not start: {line!r}")
            achieved = await _produce(variant, bootstrap, prefix, rate, count)
            await asyncio.wait_for(child.wait(), timeout=count / rate + 120)
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
        latencies = json.loads(out.read_text()) if out.exists() else []
    await delete_topics(bootstrap, [f"{prefix}session"])
    warmup = max(100, int(rate * WARMUP_S))
    ordered = sorted(latencies[warmup:])
    extra = {
        "rate": rate,
        "achieved_rate": round(achieved, 1),
        "received": len(latencies),
        "p50_ms": round(percentile(ordered, 0.50), 2),
        "p99_ms": round(percentile(ordered, 0.99), 2),
        "p999_ms": round(percentile(ordered, 0.999), 2),
        "max_ms": round(ordered[-1], 2) if ordered else float("nan"),
    }
    return Sample(count, count / achieved, extra)


async def _produce(variant: str, bootstrap: str, prefix: str, rate: int, count: int) -> float:
    settings = settings_for(bootstrap, prefix)
    if ROUTES[variant][0] == "sdk":
        config = settings.publisher_config(service="bench-latency")
        if variant == "sdk-linger1":
            config = config.model_copy(update={"linger_ms": EXPERIMENT_LINGER_MS})
        async with EventPublisher(connection=settings.connection(), config=config) as publisher:

            async def send_sdk(event: SessionCreated) -> None:
                await publisher.send(event)

            achieved = await _paced(rate, count, send_sdk)
            await publisher.flush()
            return achieved
    codec = AvroCodec()
    producer = AIOKafkaProducer(**raw_producer_options(settings))
    await producer.start()
    topic = f"{prefix}session"

    async def send_raw(event: SessionCreated) -> None:
        headers = [("event-type", b"session:created"), ("event-id", str(event.metadata.event_id).encode())]
        await producer.send(topic, codec.encode(event), key=event.session_id.encode(), headers=headers)

    try:
        return await _paced(rate, count, send_raw)
    finally:
        await producer.stop()


def report(samples: dict[str, list[Sample]], rounds: int) -> dict[str, Any]:
    """Print the table and return the JSON payload."""
    rows, payload = [], {}
    for name, runs in samples.items():
        stats = {
            key: median([float(s.extra[key]) for s in runs]) for key in ("achieved_rate", "p50_ms", "p99_ms", "p999_ms")
        }
        worst_p99 = max(float(s.extra["p99_ms"]) for s in runs)
        received = min(int(s.extra["received"]) for s in runs)
        rows.append(
            (
                name,
                f"{stats['achieved_rate']:,.0f}",
                f"{stats['p50_ms']:.1f}",
                f"{stats['p99_ms']:.1f} (worst {worst_p99:.1f})",
                f"{stats['p999_ms']:.1f}",
                f"{received:,}/{runs[0].events:,}",
            )
        )
        payload[name] = {"median": stats, "rounds": [s.extra for s in runs]}
    print_table(
        f"Latency publish -> handler start (ms), medians of {rounds} interleaved rounds",
        ["variant @ rate", "achieved/s", "p50", "p99", "p99.9", "received (min)"],
        rows,
    )
    ratios: dict[str, dict[str, Any]] = {}
    for name, runs in samples.items():  # the SDK's p99 over the raw loop's, round by round (measured back to back)
        if not name.startswith(LABELS["sdk"] + " @"):
            continue
        raw = samples.get(name.replace(LABELS["sdk"], LABELS["aiokafka"], 1), [])
        per_round = [float(a.extra["p99_ms"]) / float(b.extra["p99_ms"]) for a, b in zip(runs, raw, strict=False)]
        if per_round:
            rate = name.split(" @ ", 1)[1]
            ratios[f"p99 {LABELS['sdk']} / {LABELS['aiokafka']} @ {rate}"] = {
                "median": median(per_round),
                "rounds": per_round,
            }
    if ratios:
        print_table(
            "p99 ratios (median of per-round ratios)",
            ["ratio", "value"],
            [(k, f"{v['median']:.2f}x") for k, v in ratios.items()],
        )
    return {"rounds": rounds, "warmup_seconds": WARMUP_S, "variants": payload, "ratios": ratios}


async def run(
    seconds: float, rates: list[int], rounds: int, events: int | None = None, *, diagnose: bool = False
) -> dict[str, Any]:
    """Run the latency benchmark and write ``bench/results/latency.json``."""
    samples: dict[str, list[Sample]] = {}
    with broker() as bootstrap:
        for r in range(1, rounds + 1):
            for rate in rates:
                for variant in VARIANTS + (DIAGNOSTIC if diagnose else ()):
                    count = events or int(rate * seconds)
                    sample = await measure(variant, bootstrap, rate, count)
                    name = f"{LABELS[variant]} @ {rate:,}/s"
                    samples.setdefault(name, []).append(sample)
                    e = sample.extra
                    console.print(
                        f"  round {r}/{rounds} {name:<46} achieved {e['achieved_rate']:>9,.0f}/s  "
                        f"p50 {e['p50_ms']:7.1f}  p99 {e['p99_ms']:7.1f}  p99.9 {e['p999_ms']:7.1f} ms  "
                        f"received {e['received']:,}/{count:,}"
                    )
    payload = report(samples, rounds)
    write_results("latency", payload)
    return payload


def main() -> None:
    """Command line entry point (also the consumer subprocess, with ``--consumer``)."""
    parser = base_parser("latency publish -> handler start at fixed rates", rounds=DEFAULT_ROUNDS)
    parser.set_defaults(events=None)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--rates", default="1000,10000", help="comma-separated events/s (default 1000,10000)")
    parser.add_argument("--diagnose", action="store_true", help="add the mixed producer/consumer pairs")
    parser.add_argument("--consumer", choices=tuple(ROUTES), help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--expected", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consumer:
        asyncio.run(
            consume(
                args.consumer,
                bootstrap=args.bootstrap,
                prefix=args.prefix,
                expected=args.expected,
                out=args.out,
                timeout_s=args.timeout,
            )
        )
        return
    rates = [int(r) for r in args.rates.split(",") if r]
    asyncio.run(run(args.seconds, rates, args.rounds, args.events, diagnose=args.diagnose))


if __name__ == "__main__":
    main()
