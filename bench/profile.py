"""Where the time goes: pyinstrument on the SDK publish path and on the runtime consume path.

``python -m bench.profile [--events N] [--interval S] [--html]``

Publish: ``EventPublisher.send()`` of N pre-built events, then ``flush()`` (the profiler runs only around
that); awaited publish: ``await publish()`` of the same events from 256 tasks. Consume: the runtime
(``run_groups``) with a no-op handler over an N-event Avro backlog; the profiler starts at the first
handler call and stops at the N-th. Sampling covers the whole thread,
so time the event loop spends waiting shows up as ``select``/``_run_once`` (idle, or I/O).
Writes ``bench/results/profile_<path>.txt`` (call tree; ``--html`` adds pyinstrument's HTML view)
and prints flat tables: self time per function, and inclusive time per function of our packages.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from pyinstrument import Profiler
from pyinstrument.frame import Frame

from consumers import ConsumerGroup, HandlerContext, run_groups
from producers import EventPublisher
from schemas import SessionCreated

from ._common import (
    base_parser,
    broker,
    build_events,
    console,
    create_topic,
    delete_topics,
    encoded_records,
    print_table,
    produce_backlog,
    results_dir,
    settings_for,
    unique_name,
    write_results,
)

OUR_PACKAGES = ("/producers/", "/consumers/", "/schemas/", "/infra/")
TOP = 25


def _key(frame: Frame) -> str:
    path = frame.file_path_short or frame.file_path or "?"
    return f"{frame.function} ({path}:{frame.line_no})"


def flat_costs(root: Frame) -> tuple[dict[str, float], dict[str, float]]:
    """Self time per function, and inclusive time per function of our packages (recursion counted once)."""
    self_time: dict[str, float] = defaultdict(float)
    inclusive: dict[str, float] = defaultdict(float)

    def walk(frame: Frame, on_path: frozenset[str]) -> None:
        key = _key(frame)
        # pyinstrument puts a frame's own time in synthetic children ([self], [await]): it stays self time.
        children = [child for child in frame.children if not child.is_synthetic]
        self_time[key] += max(0.0, frame.time - sum(child.time for child in children))
        ours = any(part in (frame.file_path or "") for part in OUR_PACKAGES)
        if ours and key not in on_path:
            inclusive[key] += frame.time
        for child in children:
            walk(child, on_path | {key})

    walk(root, frozenset())
    return dict(self_time), dict(inclusive)


def save_and_print(name: str, profiler: Profiler, events: int, *, html: bool = False) -> dict[str, Any]:
    """Write the tree (text; html if asked: ~10 MB) and print the flat tables; returns them for the JSON."""
    session = profiler.last_session
    root = session.root_frame() if session is not None else None
    if root is None:
        raise RuntimeError(f"profile {name}: no samples")
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"profile_{name}.txt").write_text(profiler.output_text(unicode=True, color=False))
    if html:
        (folder / f"profile_{name}.html").write_text(profiler.output_html())
    total = root.time
    self_time, inclusive = flat_costs(root)
    top_self = sorted(self_time.items(), key=lambda kv: -kv[1])[:TOP]
    top_ours = sorted(inclusive.items(), key=lambda kv: -kv[1])[:TOP]
    per_event_us = total / events * 1e6
    print_table(
        f"{name}: self time by function ({total:.2f} s sampled, {per_event_us:.1f} us per event)",
        ["function", "self s", "%"],
        [(k, f"{v:.3f}", f"{100 * v / total:.1f}") for k, v in top_self],
    )
    print_table(
        f"{name}: inclusive time of our functions",
        ["function", "incl. s", "%"],
        [(k, f"{v:.3f}", f"{100 * v / total:.1f}") for k, v in top_ours],
    )
    return {
        "sampled_seconds": total,
        "events": events,
        "us_per_event": per_event_us,
        "top_self": [{"function": k, "seconds": v, "percent": 100 * v / total} for k, v in top_self],
        "top_inclusive_ours": [{"function": k, "seconds": v, "percent": 100 * v / total} for k, v in top_ours],
    }


async def _profile_publisher(
    bootstrap: str,
    name: str,
    events: int,
    interval: float,
    body: Callable[[EventPublisher], Awaitable[None]],
    *,
    html: bool = False,
) -> dict[str, Any]:
    """Profile ``body(publisher)`` on a fresh topic (the publisher's start and stop are not profiled)."""
    prefix = unique_name("prof")
    await create_topic(bootstrap, f"{prefix}session")
    settings = settings_for(bootstrap, prefix)
    profiler = Profiler(interval=interval, async_mode="disabled")
    async with EventPublisher(connection=settings.connection(), config=settings.publisher_config()) as publisher:
        profiler.start()
        await body(publisher)
        profiler.stop()
    await delete_topics(bootstrap, [f"{prefix}session"])
    return save_and_print(name, profiler, events, html=html)


async def profile_publish(
    bootstrap: str, events: list[SessionCreated], interval: float, *, html: bool = False
) -> dict[str, Any]:
    """Profile ``send()`` + ``flush()`` of the events."""

    async def body(publisher: EventPublisher) -> None:
        for event in events:
            await publisher.send(event)
        await publisher.flush()

    return await _profile_publisher(bootstrap, "publish", len(events), interval, body, html=html)


async def profile_awaited(
    bootstrap: str, events: list[SessionCreated], interval: float, *, tasks: int = 256, html: bool = False
) -> dict[str, Any]:
    """Profile ``await publish()`` of the events from ``tasks`` tasks, each awaiting its own calls in turn."""

    async def body(publisher: EventPublisher) -> None:
        async def worker(first: int) -> None:
            for i in range(first, len(events), tasks):
                await publisher.publish(events[i])

        await asyncio.gather(*(worker(n) for n in range(tasks)))

    return await _profile_publisher(bootstrap, "publish_awaited", len(events), interval, body, html=html)


async def profile_consume(
    bootstrap: str, events: list[SessionCreated], interval: float, *, html: bool = False
) -> dict[str, Any]:
    """Profile the runtime working through a backlog of the events with a no-op handler."""
    prefix = unique_name("prof")
    topic = f"{prefix}session"
    await create_topic(bootstrap, topic)
    await produce_backlog(bootstrap, topic, encoded_records(events), len(events))
    settings = settings_for(bootstrap, prefix)
    profiler = Profiler(interval=interval, async_mode="disabled")
    group = ConsumerGroup(f"prof-{uuid.uuid4().hex[:8]}")
    done, stop = asyncio.Event(), asyncio.Event()
    count = 0

    @group.handler(SessionCreated)
    async def noop(event: SessionCreated, ctx: HandlerContext) -> None:
        nonlocal count
        if count == 0:
            profiler.start()
        count += 1
        if count == len(events):
            profiler.stop()
            done.set()

    task = asyncio.create_task(
        run_groups(
            [group],
            connection=settings.connection(),
            publisher_config=settings.publisher_config(),
            consumer_config=settings.consumer_config(),
            runtime_config=settings.runtime_config(),
            stop=stop,
        )
    )
    await asyncio.wait_for(done.wait(), timeout=max(120.0, len(events) / 500))
    stop.set()
    await task
    await delete_topics(bootstrap, [topic])
    return save_and_print("consume", profiler, len(events), html=html)


async def run(events: int, interval: float, *, html: bool = False) -> dict[str, Any]:
    """Profile both paths and write ``bench/results/profile.json``."""
    with broker() as bootstrap:
        workload = build_events(events)
        payload = {
            "interval_s": interval,
            "publish": await profile_publish(bootstrap, workload, interval, html=html),
            "publish_awaited": await profile_awaited(bootstrap, workload, interval, html=html),
            "consume": await profile_consume(bootstrap, workload, interval, html=html),
        }
    console.print(
        f"call trees: {results_dir()}/profile_publish.txt, profile_publish_awaited.txt, profile_consume.txt"
        + (" (and .html)" if html else "")
    )
    write_results("profile", payload)
    return payload


def main() -> None:
    """Command line entry point."""
    parser = base_parser("pyinstrument profiles of the SDK publish and runtime consume paths", rounds=1)
    parser.add_argument("--interval", type=float, default=0.0005, help="sampling interval in seconds")
    parser.add_argument("--html", action="store_true", help="also write pyinstrument's HTML view (~10 MB each)")
    args = parser.parse_args()
    asyncio.run(run(args.events, args.interval, html=args.html))


if __name__ == "__main__":
    main()
