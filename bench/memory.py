"""Peak RSS of a consumer working through a backlog and of a publisher pushing events, per backlog size.

``python -m bench.memory [--events 100000,1000000] [--rounds R]``

Each measurement runs in its own subprocess, which reports its own peak RSS
(``VmHWM`` of ``/proc/self/status``) and its RSS once connected (the baseline), so measurements never
pollute each other. Per size a fresh embedded broker holds the backlog (it keeps everything in memory).
Consumers: our runtime with a no-op handler (at-least-once) and, for reference, raw aiokafka doing
getmany + decode + validate + commit per batch. Publishers: the SDK's fire-and-forget ``send()`` and,
for reference, raw aiokafka ``send()`` of the encoded event; both build each event just before sending.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from consumers import ConsumerGroup, HandlerContext, run_groups
from infra._settings import Settings
from producers import EventPublisher
from schemas import AvroCodec, SessionCreated

from ._common import (
    Sample,
    broker,
    console,
    create_topic,
    delete_topics,
    encoded_records,
    iter_events,
    median,
    print_table,
    produce_backlog,
    raw_consumer_options,
    raw_producer_options,
    settings_for,
    unique_name,
    write_results,
)

VARIANTS = ("consumer-runtime", "consumer-aiokafka", "publisher-sdk", "publisher-aiokafka")
LABELS = {
    "consumer-runtime": "consumer: runtime, no-op handler",
    "consumer-aiokafka": "consumer: aiokafka getmany loop (reference)",
    "publisher-sdk": "publisher: SDK send() fire-and-forget",
    "publisher-aiokafka": "publisher: aiokafka send() (reference)",
}
TARGET_MB = 150.0
_POOL = 10_000


def _status_mb(field: str) -> float | None:
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    return None


def rss_mb() -> float:
    """This process's resident set size now."""
    return _status_mb("VmRSS") or peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident set size.

    ``VmHWM`` (the high-water mark of this process image) first: after fork + exec, ``ru_maxrss``
    still counts the forked copy of the parent, so it reports the parent's size for a small child.
    """
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the measured work (subprocess) -----------------------------------------------------------


Work = Callable[[Settings, str, int], Awaitable[tuple[float, float]]]


async def _consumer_runtime(settings: Settings, prefix: str, events: int) -> tuple[float, float]:
    count = 0
    done, stop, ready = asyncio.Event(), asyncio.Event(), asyncio.Event()
    group = ConsumerGroup(f"mem-{uuid.uuid4().hex[:8]}")

    @group.handler(SessionCreated)
    async def noop(event: SessionCreated, ctx: HandlerContext) -> None:
        nonlocal count
        count += 1
        if count >= events:
            done.set()

    task = asyncio.create_task(
        run_groups(
            [group],
            connection=settings.connection(),
            publisher_config=settings.publisher_config(service="bench-memory"),
            consumer_config=settings.consumer_config(),
            runtime_config=settings.runtime_config(),
            stop=stop,
            started=ready,
        )
    )
    await ready.wait()
    baseline, started = rss_mb(), time.perf_counter()
    await done.wait()
    stop.set()
    await task
    return baseline, started


async def _consumer_aiokafka(settings: Settings, prefix: str, events: int) -> tuple[float, float]:
    codec = AvroCodec()
    group = unique_name("mem").rstrip("-")
    consumer = AIOKafkaConsumer(f"{prefix}session", group_id=group, **raw_consumer_options(settings))
    await consumer.start()
    baseline, started, count = rss_mb(), time.perf_counter(), 0
    try:
        while count < events:
            batch = await consumer.getmany(timeout_ms=200, max_records=2000)
            if batch and not count:
                started = time.perf_counter()  # the group join is not part of the rate
            offsets = {}
            for tp, records in batch.items():
                for record in records:
                    codec.decode(record.value)
                offsets[tp] = records[-1].offset + 1
                count += len(records)
            if offsets:
                await consumer.commit(offsets)
    finally:
        await consumer.stop()
    return baseline, started


async def _publisher_sdk(settings: Settings, prefix: str, events: int) -> tuple[float, float]:
    config = settings.publisher_config(service="bench-memory")
    async with EventPublisher(connection=settings.connection(), config=config) as publisher:
        baseline, started = rss_mb(), time.perf_counter()
        for event in iter_events(events):
            await publisher.send(event)
        await publisher.flush()
    return baseline, started


async def _publisher_aiokafka(settings: Settings, prefix: str, events: int) -> tuple[float, float]:
    codec = AvroCodec()
    producer = AIOKafkaProducer(**raw_producer_options(settings))
    await producer.start()
    baseline, started = rss_mb(), time.perf_counter()
    topic = f"{prefix}session"
    try:
        for event in iter_events(events):
            headers = [("event-type", b"session:created"), ("event-id", str(event.metadata.event_id).encode())]
            await producer.send(topic, codec.encode(event), key=event.session_id.encode(), headers=headers)
        await producer.flush()
    finally:
        await producer.stop()
    return baseline, started


WORK: dict[str, Work] = {
    "consumer-runtime": _consumer_runtime,
    "consumer-aiokafka": _consumer_aiokafka,
    "publisher-sdk": _publisher_sdk,
    "publisher-aiokafka": _publisher_aiokafka,
}


async def child(variant: str, bootstrap: str, prefix: str, events: int) -> dict[str, Any]:
    """Do the work of ``variant`` on ``events`` events; report baseline, peak and final RSS."""
    baseline, started = await WORK[variant](settings_for(bootstrap, prefix), prefix, events)
    seconds = time.perf_counter() - started
    return {"baseline_mb": baseline, "peak_mb": peak_rss_mb(), "final_mb": rss_mb(), "seconds": seconds}


# -- orchestration --------------------------------------------------------------------------------


async def measure(variant: str, bootstrap: str, prefix: str, events: int) -> Sample:
    """Run one subprocess and read its report (the last stdout line, JSON)."""
    argv = ["-m", "bench.memory", "--child", variant, "--bootstrap", bootstrap, "--prefix", prefix]
    argv += ["--events", str(events)]
    proc = await asyncio.create_subprocess_exec(sys.executable, *argv, stdout=asyncio.subprocess.PIPE)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=events / 1000 + 300)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {variant} failed with code {proc.returncode}")
    report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return Sample(events, float(report["seconds"]), {k: round(float(v), 1) for k, v in report.items()})


async def run_size(events: int, rounds: int) -> dict[str, list[Sample]]:
    """All variants, ``rounds`` interleaved rounds, one backlog of ``events`` on a broker of its own."""
    samples: dict[str, list[Sample]] = {v: [] for v in VARIANTS}
    with broker() as bootstrap:
        backlog = unique_name("mem")
        await create_topic(bootstrap, f"{backlog}session")
        console.print(f"writing a backlog of {events:,} events ...")
        pool = encoded_records(list(iter_events(min(events, _POOL))))
        await produce_backlog(bootstrap, f"{backlog}session", pool, events)
        for r in range(1, rounds + 1):
            for variant in VARIANTS:
                prefix = backlog if variant.startswith("consumer") else unique_name("mempub")
                if not variant.startswith("consumer"):
                    await create_topic(bootstrap, f"{prefix}session")
                sample = await measure(variant, bootstrap, prefix, events)
                if not variant.startswith("consumer"):
                    await delete_topics(bootstrap, [f"{prefix}session"])
                samples[variant].append(sample)
                e = sample.extra
                console.print(
                    f"  {events:>9,} round {r}/{rounds} {LABELS[variant]:<44} peak {e['peak_mb']:6.1f} MB  "
                    f"baseline {e['baseline_mb']:6.1f} MB  {sample.rate:9,.0f}/s"
                )
    return samples


def report(by_size: dict[int, dict[str, list[Sample]]], rounds: int) -> dict[str, Any]:
    """Print the table and return the JSON payload."""
    sizes = sorted(by_size)
    rows, payload = [], {}
    for variant in VARIANTS:
        peaks = {size: median([s.extra["peak_mb"] for s in by_size[size][variant]]) for size in sizes}
        bases = {size: median([s.extra["baseline_mb"] for s in by_size[size][variant]]) for size in sizes}
        rates = {size: median([s.rate for s in by_size[size][variant]]) for size in sizes}
        growth = peaks[sizes[-1]] / peaks[sizes[0]] if len(sizes) > 1 else 1.0
        target = "yes" if peaks[sizes[-1]] <= TARGET_MB else "NO"
        cells = [f"{peaks[size]:.1f} ({bases[size]:.1f})" for size in sizes]
        rows.append((LABELS[variant], *cells, f"{growth:.2f}x", f"{rates[sizes[-1]]:,.0f}", target))
        payload[variant] = {
            str(size): {
                "median_peak_mb": peaks[size],
                "median_baseline_mb": bases[size],
                "median_rate": rates[size],
                "rounds": [s.extra for s in by_size[size][variant]],
            }
            for size in sizes
        }
    print_table(
        f"Peak RSS in MB (baseline once connected), medians of {rounds} rounds, one subprocess per measurement",
        ["process", *[f"{size:,} events" for size in sizes], "growth", "events/s (largest)", f"<= {TARGET_MB:.0f} MB"],
        rows,
    )
    return {"rounds": rounds, "sizes": sizes, "target_mb": TARGET_MB, "variants": payload}


async def run(sizes: list[int], rounds: int) -> dict[str, Any]:
    """Run the memory benchmark and write ``bench/results/memory.json``."""
    by_size = {size: await run_size(size, rounds) for size in sizes}
    payload = report(by_size, rounds)
    write_results("memory", payload)
    return payload


def main() -> None:
    """Command line entry point (also the measured subprocess, with ``--child``)."""
    parser = argparse.ArgumentParser(description="peak RSS of a consumer and a publisher, per backlog size")
    parser.add_argument("--events", default="100000,1000000", help="comma-separated sizes (default 100000,1000000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per size (default 3)")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = asyncio.run(child(args.child, args.bootstrap, args.prefix, int(args.events)))
        print(json.dumps(result), flush=True)
        return
    asyncio.run(run([int(s) for s in args.events.split(",") if s], args.rounds))


if __name__ == "__main__":
    main()
