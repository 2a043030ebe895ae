"""Codec micro benchmark: fastavro vs the compiled codec, per event type, interleaved (no broker).

``python -m bench.codec [--events N] [--rounds R]``

For every event type of the catalog, N events (the CLI's example payload, fresh metadata each) are
encoded the way the publisher does (``encode_with`` and its metadata overrides), decoded to plain
fields (``decode_dict``, what the runtime does first) and decoded to validated events
(``decode_dict`` + ``decode_dict_as_event``), by ``AvroCodec(compiled=False)`` (fastavro) and by
``AvroCodec()`` (compiled). Each round measures every type and both codecs back to back; figures
are medians over the rounds, speed-ups the median of per-round ratios (fastavro time / compiled time).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from infra._cli_schemas import example_payload
from schemas import CATALOG, AvroCodec, Event, EventSpec

from ._common import base_parser, median
from ._output import console, print_table, write_results

OPERATIONS = ("encode", "decode_dict", "decode")
CODECS = {"fastavro": AvroCodec(compiled=False), "compiled": AvroCodec()}

Work = tuple[EventSpec, list[Event], list[dict[str, Any]], list[bytes]]
"""One event type's spec, events, the publisher's metadata overrides for each, and the events' bytes."""


def build_workload(events: int) -> dict[str, Work]:
    """Per event type: its spec, ``events`` events, the publisher's overrides for each, and their bytes."""
    workload: dict[str, Work] = {}
    reference = CODECS["fastavro"]
    for spec in CATALOG:
        payload = example_payload(spec)
        batch = [CATALOG.parse(spec.event_type, payload) for _ in range(events)]
        overrides = [{"event_id": str(e.metadata.event_id), "service": "bench", "version": "1.0"} for e in batch]
        data = [reference.encode_with(spec, e, o) for e, o in zip(batch, overrides, strict=True)]
        workload[spec.event_type] = (spec, batch, overrides, data)
    return workload


def _timed(run: Callable[[], None], count: int) -> float:
    """µs per event of one pass."""
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) / count * 1e6


def measure(codec: AvroCodec, operation: str, work: Work) -> float:
    """µs per event of one operation over a type's batch."""
    spec, batch, overrides, data = work
    if operation == "encode":
        encode_with = codec.encode_with

        def run() -> None:
            for event, meta in zip(batch, overrides, strict=True):
                encode_with(spec, event, meta)

    elif operation == "decode_dict":
        decode_dict = codec.decode_dict

        def run() -> None:
            for value in data:
                decode_dict(value)

    else:
        decode_dict, as_event = codec.decode_dict, codec.decode_dict_as_event

        def run() -> None:
            for value in data:
                as_event(*decode_dict(value))

    return _timed(run, len(batch))


def run_rounds(workload: dict[str, Work], rounds: int) -> dict[tuple[str, str, str], list[float]]:
    """Round r measures every (type, operation, codec) before round r + 1 starts."""
    samples: dict[tuple[str, str, str], list[float]] = {}
    for r in range(1, rounds + 1):
        started = time.perf_counter()
        for event_type, work in workload.items():
            for operation in OPERATIONS:
                for name, codec in CODECS.items():
                    value = measure(codec, operation, work)
                    samples.setdefault((event_type, operation, name), []).append(value)
        console.print(f"  round {r}/{rounds} done in {time.perf_counter() - started:.1f} s")
    return samples


def report(samples: dict[tuple[str, str, str], list[float]], events: int, rounds: int) -> dict[str, Any]:
    """Print the table and return the JSON payload."""
    rows = []
    types: dict[str, Any] = {}
    for event_type in CATALOG.event_types:
        row = [event_type]
        per_type: dict[str, Any] = {}
        for operation in OPERATIONS:
            slow, fast = samples[event_type, operation, "fastavro"], samples[event_type, operation, "compiled"]
            ratios = [s / f for s, f in zip(slow, fast, strict=True) if f > 0]
            per_type[operation] = {
                "fastavro_us": median(slow),
                "compiled_us": median(fast),
                "speedup": median(ratios),
                "rounds": {"fastavro_us": slow, "compiled_us": fast, "speedup": ratios},
            }
            row += [f"{median(slow):.2f}", f"{median(fast):.2f}", f"{median(ratios):.2f}x"]
        rows.append(row)
        types[event_type] = per_type
    columns = ["event type"]
    for operation in ("encode_with", "decode_dict", "decode"):
        columns += [f"{operation} fastavro", "compiled", "x"]
    title = f"Codec µs per event, {events:,} events per type, medians of {rounds} interleaved rounds (x: speed-up)"
    print_table(title, columns, rows)
    return {"events_per_type": events, "rounds": rounds, "operations": list(OPERATIONS), "types": types}


def main() -> None:
    """Command line entry point."""
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "codec benchmark", events=2000, rounds=3)
    args = parser.parse_args()
    console.print(f"building {args.events:,} events per type ...")
    workload = build_workload(args.events)
    gc.collect()
    gc.freeze()
    payload = report(run_rounds(workload, args.rounds), args.events, args.rounds)
    write_results("codec", payload)


if __name__ == "__main__":
    main()
