"""Where a consumed record's CPU goes, with no broker: decode, the handler contract, the runtime's dispatch.

``python -m bench.dispatch [--events N] [--rounds R]``

N keyed ``session:created`` records (aiokafka ``ConsumerRecord`` objects, built once, 3 partitions) are
handed out by a transport that answers every fetch at once, so no fetch, network or broker time is
counted. Three passes over the same records, interleaved, CPU time (``time.process_time``) per record:

* **decode + validate**: ``AvroCodec.decode`` of each record, what the raw aiokafka loop of
  ``bench.consume`` does;
* **+ handler contract**: the same plus what every handler call costs (a ``HandlerContext``, the cause
  set and reset, the awaited no-op handler, its latency observed);
* **runtime**: ``GroupRunner`` with a no-op handler (per-partition queues, ordered dispatch, handler
  slots, watermarks, pause and resume, the commit bookkeeping), from the first handler call to the N-th.

The differences are the price of each layer; ``bench.consume`` adds aiokafka's own per-record work
(parsing, ``ConsumerRecord``), paid by the raw loop and the runtime alike. Minimum and median over the
rounds (the minimum is the least disturbed by other work on the machine).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry

from consumers import (
    ConsumedRecord,
    ConsumerGroup,
    GroupRunner,
    HandlerContext,
    HandlerScope,
    PartitionsCallback,
    RuntimeMetrics,
    TopicPartition,
)
from producers import EventPublisher, KafkaConnection, reset_cause, set_cause
from schemas import AvroCodec, SessionCreated

from ._common import PARTITIONS, base_parser, build_events, encoded_records, expected_partition, median
from ._output import console, print_table, write_results

TOPIC = "session"
BATCH = 2_000
DECODE = "decode + validate (raw loop's work)"
CONTRACT = "+ handler contract (context, cause, await, histogram)"
RUNTIME = "runtime (GroupRunner, no-op handler)"

Partitions = dict[int, list[ConsumerRecord[bytes, bytes]]]


def build_records(events: int) -> Partitions:
    """The records of ``events`` keyed events, per partition, with offsets from 0."""
    parts: Partitions = {p: [] for p in range(PARTITIONS)}
    for key, value, headers in encoded_records(build_events(events)):
        p = expected_partition(key)
        parts[p].append(
            ConsumerRecord(TOPIC, p, len(parts[p]), 0, 0, key, value, None, len(key), len(value), tuple(headers))
        )
    return parts


class _Replay:
    """A consumer transport over records already in memory: each fetch answers at once."""

    def __init__(self, parts: Partitions) -> None:
        self.parts = parts
        self.position = dict.fromkeys(parts, 0)
        self.held: set[TopicPartition] = set()

    async def start(self, topics: list[str], on_assigned: PartitionsCallback, on_revoked: PartitionsCallback) -> None:
        await on_assigned({TopicPartition(TOPIC, p) for p in self.parts})

    async def stop(self) -> None:
        return None

    async def fetch(self, timeout_s: float, max_records: int) -> dict[TopicPartition, list[ConsumedRecord]]:
        out: dict[TopicPartition, list[ConsumedRecord]] = {}
        for p, records in self.parts.items():
            tp = TopicPartition(TOPIC, p)
            if tp in self.held or max_records <= 0:
                continue
            taken = records[self.position[p] : self.position[p] + max_records]
            if taken:
                out[tp] = list(taken)
                self.position[p] += len(taken)
                max_records -= len(taken)
        if not out:
            await asyncio.sleep(0.001)
        return out

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        return None

    async def committed(self, partition: TopicPartition) -> int | None:
        return None

    def pause(self, partitions: set[TopicPartition]) -> None:
        self.held |= partitions

    def resume(self, partitions: set[TopicPartition]) -> None:
        self.held -= partitions

    def highwater(self, partition: TopicPartition) -> int | None:
        return len(self.parts[partition.partition])

    async def ensure_topics(self, names: list[str], *, partitions: int, replication: int) -> None:
        return None


def _batches(parts: Partitions) -> list[list[ConsumerRecord[bytes, bytes]]]:
    return [records[i : i + BATCH] for records in parts.values() for i in range(0, len(records), BATCH)]


async def decode_only(parts: Partitions, count: int) -> float:
    """µs of CPU per record: decode and validate each record, batch by batch."""
    codec = AvroCodec()
    started = time.process_time()
    for batch in _batches(parts):
        for record in batch:
            codec.decode(record.value)
        await asyncio.sleep(0)
    return (time.process_time() - started) / count * 1e6


async def with_contract(parts: Partitions, count: int) -> float:
    """µs of CPU per record: decode, validate and call a no-op handler the way the runtime does."""
    codec = AvroCodec()
    latency = RuntimeMetrics(CollectorRegistry()).latency.labels("bench", "session:created")
    scope = HandlerScope("bench", EventPublisher(connection=KafkaConnection()))  # never started

    async def noop(event: object, ctx: HandlerContext) -> None:
        return None

    clock = time.perf_counter
    started = time.process_time()
    for batch in _batches(parts):
        for record in batch:
            event = codec.decode(record.value)
            context = HandlerContext.for_record(scope, event, record, 1)
            cause = set_cause(event)
            begun = clock()
            try:
                await noop(event, context)
            finally:
                reset_cause(cause)
            latency.observe(clock() - begun)
        await asyncio.sleep(0)
    return (time.process_time() - started) / count * 1e6


async def runtime(parts: Partitions, count: int) -> float:
    """µs of CPU per record: the runtime over the replayed records, first handler call to the last."""
    group = ConsumerGroup("bench-dispatch")
    done = asyncio.Event()
    window = {"handled": 0, "first": 0.0, "last": 0.0}

    @group.handler(SessionCreated)
    async def noop(event: SessionCreated, ctx: HandlerContext) -> None:
        if not window["handled"]:
            window["first"] = time.process_time()
        window["handled"] += 1
        if window["handled"] == count:
            window["last"] = time.process_time()
            done.set()

    stop = asyncio.Event()
    runner = GroupRunner(
        group,
        transport=_Replay(parts),
        publisher=EventPublisher(connection=KafkaConnection()),  # never started: the handler publishes nothing
        metrics=RuntimeMetrics(CollectorRegistry()),
    )
    task = asyncio.create_task(runner.run(stop))
    await asyncio.wait_for(done.wait(), timeout=max(60.0, count / 1000))
    stop.set()
    await task
    return (window["last"] - window["first"]) / (count - 1) * 1e6


async def run(events: int, rounds: int) -> dict[str, Any]:
    """Measure the three passes interleaved and write ``bench/results/dispatch.json``."""
    console.print(f"building {events:,} records ...")
    parts = build_records(events)
    passes: Sequence[tuple[str, Callable[[Partitions, int], Coroutine[Any, Any, float]]]] = (
        (DECODE, decode_only),
        (CONTRACT, with_contract),
        (RUNTIME, runtime),
    )
    measured: dict[str, list[float]] = {name: [] for name, _ in passes}
    for n in range(1, rounds + 1):
        for name, body in passes:
            value = await body(parts, events)
            measured[name].append(value)
            console.print(f"  round {n}/{rounds} {name:55} {value:6.2f} µs/record")
    best = {name: min(values) for name, values in measured.items()}
    layers = {
        "handler contract": best[CONTRACT] - best[DECODE],
        "runtime dispatch": best[RUNTIME] - best[CONTRACT],
    }
    print_table(
        f"CPU per record, no broker ({events:,} records, {rounds} interleaved rounds)",
        ["pass", "µs (min)", "µs (median)"],
        [(name, f"{min(v):.2f}", f"{median(v):.2f}") for name, v in measured.items()],
    )
    print_table(
        "What each layer adds (differences of the minimums)",
        ["layer", "µs per record", "share of the runtime's CPU"],
        [(name, f"{value:.2f}", f"{value / best[RUNTIME]:.0%}") for name, value in layers.items()],
    )
    payload = {
        "events": events,
        "rounds": rounds,
        "passes": {name: {"min_us": min(v), "median_us": median(v), "rounds_us": v} for name, v in measured.items()},
        "layers_us": layers,
    }
    write_results("dispatch", payload)
    return payload


def main() -> None:
    """Command line entry point."""
    args = base_parser("CPU per consumed record, no broker: decode, handler contract, runtime", rounds=9).parse_args()
    asyncio.run(run(args.events, args.rounds))


if __name__ == "__main__":
    main()
