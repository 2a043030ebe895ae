"""What OpenTelemetry tracing costs the publisher and the runtime: not configured, configured unsampled, sampled.

``python -m bench.tracing [--events N] [--rounds R] [--before DIR]``

Three configurations, interleaved round by round, each measured on the same three workloads:

* **not configured**: no ``TracerProvider`` hands out real tracers (the publisher and the runners hold
  ``None``: the cost is one attribute check per event);
* **SDK, sampling off**: the SDK's provider with ``ALWAYS_OFF``: spans are created (non-recording) and the
  trace context still goes into the headers;
* **SDK, sampling on**: ``ALWAYS_ON``, a ``BatchSpanProcessor`` into an exporter that drops the spans.

Workloads: ``send()`` x N + ``flush()``; ``await publish()`` x N from 256 tasks; the runtime (``GroupRunner``,
no-op handler) over an N-record backlog whose records carry a ``traceparent`` (the clock runs from the first
handler call to the N-th). OpenTelemetry sets its global provider once per process, so one provider is set
and switched between the three (its ``get_tracer`` answers a no-op tracer while "not configured", which
the libraries take for "not configured", exactly as without a provider).

``--before DIR``: a fourth configuration, the code before tracing existed: ``DIR/_publisher.py`` and
``DIR/_runner.py`` (copies of ``producers/_publisher.py`` and ``consumers/_runner.py`` from before the
change) loaded beside the current modules. Writes ``bench/results/tracing.json``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from prometheus_client import CollectorRegistry

import consumers._runner
import producers._publisher
from consumers import ConsumerGroup, HandlerContext, KafkaConsumerTransport, RuntimeMetrics
from schemas import SessionCreated

from ._common import (
    Sample,
    base_parser,
    broker,
    build_events,
    console,
    create_topic,
    delete_topics,
    encoded_records,
    freeze_workload,
    median,
    per_round_ratio,
    print_table,
    produce_backlog,
    run_interleaved,
    settings_for,
    summarize,
    unique_name,
    write_results,
)

DEFAULT_EVENTS = 20_000
TASKS = 256
BEFORE, OFF, UNSAMPLED, SAMPLED = "before tracing", "not configured", "SDK, sampling off", "SDK, sampling on"
SEND, AWAIT, RUNTIME = "send()+flush()", f"await publish() x {TASKS} tasks", "runtime, no-op handler"
_TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class _Dropping(SpanExporter):
    """Exports nothing: what the span pipeline costs without the network."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


class _Switch(TracerProvider):
    """The global provider: a no-op tracer ("not configured") or one of two SDK providers' tracers."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = OFF
        self.unsampled = TracerProvider(sampler=ALWAYS_OFF)
        self.sampled = TracerProvider(sampler=ALWAYS_ON)
        self.sampled.add_span_processor(BatchSpanProcessor(_Dropping()))

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> trace.Tracer:
        if self.mode == UNSAMPLED:
            return self.unsampled.get_tracer(instrumenting_module_name)
        if self.mode == SAMPLED:
            return self.sampled.get_tracer(instrumenting_module_name)
        return trace.NoOpTracer()


def _load_before(folder: Path, package: str, name: str) -> ModuleType:
    """``folder/<name>.py`` loaded as ``<package>.<name>_before`` (its relative imports resolve in ``package``)."""
    spec = importlib.util.spec_from_file_location(f"{package}.{name}_before", folder / f"{name}.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {folder / name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class TracingBench:
    """The workloads under each configuration, on one broker and one pre-built workload."""

    def __init__(self, bootstrap: str, events: int, switch: _Switch, before: Path | None) -> None:
        self.bootstrap = bootstrap
        self.events = build_events(events)
        self.switch = switch
        self.modules: dict[str, tuple[Any, Any]] = dict.fromkeys(
            (OFF, UNSAMPLED, SAMPLED), (producers._publisher.EventPublisher, consumers._runner.GroupRunner)
        )
        if before is not None:
            publisher = _load_before(before, "producers", "_publisher")
            runner = _load_before(before, "consumers", "_runner")
            self.modules[BEFORE] = (publisher.EventPublisher, runner.GroupRunner)
        self.backlog_prefix = unique_name("tracing-backlog")
        self.backlog = f"{self.backlog_prefix}session"

    async def setup(self) -> None:
        await create_topic(self.bootstrap, self.backlog)
        records = [(k, v, [*h, ("traceparent", _TRACEPARENT)]) for k, v, h in encoded_records(self.events)]
        await produce_backlog(self.bootstrap, self.backlog, records, len(self.events))

    async def teardown(self) -> None:
        await delete_topics(self.bootstrap, [self.backlog])

    def variant(self, config: str, workload: str) -> Callable[[], Awaitable[Sample]]:
        async def run() -> Sample:
            self.switch.mode = config
            publisher_class, runner_class = self.modules[config]
            if workload == RUNTIME:
                return await self.runtime(publisher_class, runner_class)
            return await self.publish(publisher_class, awaited=workload == AWAIT)

        return run

    async def publish(self, publisher_class: Any, *, awaited: bool) -> Sample:
        prefix = unique_name("tracing")
        await create_topic(self.bootstrap, f"{prefix}session")
        settings = settings_for(self.bootstrap, prefix)
        try:
            publisher = publisher_class(connection=settings.connection(), config=settings.publisher_config("bench"))
            async with publisher:
                started = time.perf_counter()
                if awaited:

                    async def worker(first: int) -> None:
                        for i in range(first, len(self.events), TASKS):
                            await publisher.publish(self.events[i])

                    await asyncio.gather(*(worker(n) for n in range(TASKS)))
                else:
                    for event in self.events:
                        await publisher.send(event)
                    await publisher.flush()
                seconds = time.perf_counter() - started
        finally:
            await delete_topics(self.bootstrap, [f"{prefix}session"])
        return Sample(len(self.events), seconds)

    async def runtime(self, publisher_class: Any, runner_class: Any) -> Sample:
        expected = len(self.events)
        done = asyncio.Event()
        clock = {"count": 0, "first": 0.0, "last": 0.0}
        group = ConsumerGroup(f"tracing-{uuid.uuid4().hex[:8]}")

        @group.handler(SessionCreated)
        async def noop(event: SessionCreated, ctx: HandlerContext) -> None:
            clock["count"] += 1
            if clock["count"] == 1:
                clock["first"] = time.perf_counter()
            elif clock["count"] == expected:
                clock["last"] = time.perf_counter()
                done.set()

        settings = settings_for(self.bootstrap, self.backlog_prefix)
        connection = settings.connection()
        stop = asyncio.Event()
        async with publisher_class(connection=connection, config=settings.publisher_config("bench")) as publisher:
            runner = runner_class(
                group,
                transport=KafkaConsumerTransport(
                    connection, settings.consumer_config(), group_id=f"{connection.topic_prefix}{group.name}"
                ),
                publisher=publisher,
                config=settings.runtime_config(),
                metrics=RuntimeMetrics(CollectorRegistry()),
            )
            task = asyncio.create_task(runner.run(stop))
            try:
                await asyncio.wait_for(done.wait(), timeout=max(300.0, expected / 200))
            finally:
                stop.set()
                await task
        return Sample(expected - 1, clock["last"] - clock["first"])


def report(samples: dict[str, list[Sample]], configs: list[str], events: int, rounds: int) -> dict[str, Any]:
    """Print the tables and return the JSON payload."""
    baseline = BEFORE if BEFORE in configs else OFF
    rows, ratios = [], {}
    for workload in (SEND, AWAIT, RUNTIME):
        for config in configs:
            name = f"{workload} | {config}"
            rates = [s.rate for s in samples[name]]
            ratio = per_round_ratio(samples, name, f"{workload} | {baseline}")
            ratios[f"{name} / {baseline}"] = ratio
            rows.append(
                (
                    workload,
                    config,
                    f"{median(rates):,.0f}",
                    f"{min(rates):,.0f} - {max(rates):,.0f}",
                    f"{median(ratio):.3f}x",
                )
            )
    print_table(
        f"Tracing overhead, {events:,} session:created events, medians of {rounds} interleaved rounds",
        ["workload", "configuration", "events/s (median)", "range", f"vs {baseline}"],
        rows,
    )
    return {
        "events": events,
        "rounds": rounds,
        "baseline": baseline,
        "variants": summarize(samples),
        "ratios": {name: {"median": median(values), "rounds": values} for name, values in ratios.items()},
    }


async def run(events: int, rounds: int, before: Path | None = None) -> dict[str, Any]:
    """Run the tracing benchmark and write ``bench/results/tracing.json``."""
    switch = _Switch()
    trace.set_tracer_provider(switch)
    configs = ([BEFORE] if before is not None else []) + [OFF, UNSAMPLED, SAMPLED]
    with broker() as bootstrap:
        bench = TracingBench(bootstrap, events, switch, before)
        await bench.setup()
        freeze_workload()
        variants = [
            (f"{workload} | {config}", bench.variant(config, workload))
            for workload in (SEND, AWAIT, RUNTIME)
            for config in configs
        ]
        try:
            samples = await run_interleaved(variants, rounds)
        finally:
            await bench.teardown()
            switch.sampled.shutdown()
        payload = report(samples, configs, events, rounds)
    write_results("tracing", payload)
    return payload


def main() -> None:
    """Command line entry point."""
    parser = base_parser("what OpenTelemetry tracing costs the publisher and the runtime", events=DEFAULT_EVENTS)
    parser.add_argument("--before", type=Path, help="folder with _publisher.py and _runner.py from before tracing")
    args = parser.parse_args()
    console.print(f"{args.events:,} events, {args.rounds} rounds")
    asyncio.run(run(args.events, args.rounds, args.before))


if __name__ == "__main__":
    main()
