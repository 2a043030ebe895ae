"""Running one consumer group: fetch, dispatch in order, retry, dead-letter, commit watermarks.

The delivery invariants (docs/delivery-invariants.md) this module keeps:
a partition's committed offset is 1 + the last offset whose record is done
(handled, or its dead letter acknowledged); records of one partition run one
at a time, in order; fetched-not-done records are bounded per partition and in
all (partitions are paused, not buffered); revocation and shutdown stop
dispatching, wait (bounded) for handlers in flight and commit what is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from producers import EventPublisher, codec_for, reset_cause, set_cause
from schemas import AvroCodec, Event
from schemas.errors import BrokerError, CommitFailedError, DecodeError, EventBusError

from ._backoff import backoff_delay, is_retriable
from ._config import RuntimeConfig
from ._context import HandlerContext, HandlerScope
from ._failures import FailureRouter
from ._group import ConsumerGroup, Handler
from ._metrics import RuntimeMetrics, default_metrics
from ._retry_tiers import RetryState, retry_topic_name
from ._store import ProcessedEventStore
from ._tracing import ProcessTracing
from ._transport import ConsumedRecord, ConsumerTransport, TopicPartition

__all__ = ["GroupRunner"]

log = logging.getLogger("eventbus.consumer")

_RUN = 64
"""Records a partition handles per turn with a handler slot."""
_FAILURES_LOGGED_EVERY = 5
"""Of repeated fetch or commit failures (about one a second), one in this many is logged."""


class _Partition:
    """Dispatch state of one assigned partition."""

    __slots__ = ("committed", "delayed", "done_offset", "lag", "paused", "queue", "stopped", "task", "tp", "wakeup")

    def __init__(self, tp: TopicPartition, lag: Any, *, delayed: bool = False) -> None:
        self.tp = tp
        self.lag = lag  # the partition's child of the lag gauge
        self.delayed = delayed  # a retry-tier partition: each record waits until it is due
        self.queue: deque[ConsumedRecord] = deque()
        self.done_offset: int | None = None  # 1 + offset of the last done record
        self.committed: int | None = None
        self.paused = False
        self.stopped = False
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class GroupRunner:
    """Runs one group on one transport until ``stop`` is set.

    Example::

        runner = GroupRunner(group, transport=transport, publisher=publisher, config=RuntimeConfig(concurrency=8))
        await runner.run(stop_event)
    """

    def __init__(
        self,
        group: ConsumerGroup,
        *,
        transport: ConsumerTransport,
        publisher: EventPublisher,
        config: RuntimeConfig | None = None,
        codec: AvroCodec | None = None,
        store: ProcessedEventStore | None = None,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        self.group = group
        self.config = config or RuntimeConfig()
        self._transport = transport
        self._publisher = publisher
        self._codec = codec or codec_for(publisher.connection, catalog=group.catalog)
        self._store = store
        self._scope = HandlerScope(group.name, publisher, store)
        self._metrics = metrics or default_metrics()
        self._parts: dict[TopicPartition, _Partition] = {}
        self._slots = asyncio.Semaphore(self.config.concurrency)
        self._buffered = 0
        self._room = asyncio.Event()
        self._room.set()
        self._stop = asyncio.Event()
        self._stopping = False
        self.assigned = asyncio.Event()
        """Set once the group has given this member its first assignment (tests wait on it)."""
        self._consumed = self._metrics.consumed.labels(group.name)
        self._by_type: dict[str, tuple[Any, Any, Any]] = {}
        self._background_error: BaseException | None = None
        self._commit_failures = 0
        self._commit_lock = asyncio.Lock()  # one commit at a time: a slower older one never lands after a newer
        self._background_commit: asyncio.Task[None] | None = None
        self._commit_again = False
        self._tracing: ProcessTracing | None = None
        """OpenTelemetry process spans, or None (the usual case) when tracing is not configured; set by ``run``."""
        connection = publisher.connection
        tiers = self.config.retry_tiers_s
        self._retry_topics = [connection.topic(retry_topic_name(group.name, n)) for n in range(1, len(tiers) + 1)]
        self._failures = FailureRouter(
            group=group.name,
            publisher=publisher,
            metrics=self._metrics,
            retry_topics=self._retry_topics,
            retry_delays_s=tiers,
            pause=self._pause,
            retry_pause_s=self.config.dead_letter_retry_s,
            keep_key_order=self.config.retry_keep_key_order,
        )

    # -- lifecycle ---------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set, then shut down gracefully (invariant 9)."""
        if stop is not None:
            self._stop = stop
        connection = self._publisher.connection
        self._tracing = ProcessTracing.create(f"{connection.topic_prefix}{self.group.name}", self.group.name)
        topics = [self._publisher.connection.topic(topic) for topic in self.group.topics]
        if self._retry_topics:
            await self._transport.ensure_topics(
                self._retry_topics,
                partitions=self.config.retry_topic_partitions,
                replication=self.config.retry_topic_replication,
            )
            await self._publisher.refresh_topics()
        await self._transport.start(topics + self._retry_topics, self._on_assigned, self._on_revoked)
        log.info("group started", extra={"group": self.group.name, "topics": topics})
        background: list[asyncio.Task[None]] = [
            asyncio.create_task(
                work(self._publisher, self._stop), name=f"{self.group.name}:{getattr(work, '__name__', 'background')}"
            )
            for work in self.group.background_tasks
        ]
        for task in background:
            task.add_done_callback(self._on_background_done)
        try:
            await self._fetch_loop()
        finally:
            await self._shutdown(background)
        if self._background_error is not None:
            msg = f"group {self.group.name} stopped: {self._background_error!r}"
            raise EventBusError(msg) from self._background_error

    def _on_background_done(self, task: asyncio.Task[None]) -> None:
        """A background task that dies stops the group at once (its work would silently stall otherwise)."""
        if task.cancelled() or task.exception() is None:
            return
        self._background_error = task.exception()
        log.error(
            "background task %s failed; stopping the group: %s",
            task.get_name(),
            self._background_error,
            extra={"group": self.group.name, "task": task.get_name()},
        )
        self._stop.set()

    async def _fetch_loop(self) -> None:
        config = self.config
        next_commit = time.monotonic() + config.commit_interval_s
        failures = 0
        while not self._stop.is_set():
            if self._buffered >= config.max_buffered_total:
                self._room.clear()
                await _wait_any(self._room, self._stop, wait_s=config.fetch_timeout_s)
            else:
                try:
                    batch = await self._transport.fetch(config.fetch_timeout_s, config.fetch_max_records)
                except BrokerError as exc:
                    if not exc.retriable:  # e.g. the broker lost the group's topics: say so and stop
                        self._background_error = exc
                        log.error(  # noqa: TRY400 - the message is the reason; a traceback adds nothing
                            "fetching cannot go on; stopping the group: %s", exc, extra={"group": self.group.name}
                        )
                        return
                    failures += 1
                    if failures == 1 or failures % _FAILURES_LOGGED_EVERY == 0:  # one line every few seconds
                        log.warning(
                            "fetch failed (%d in a row), retrying every second: %s",
                            failures,
                            exc,
                            extra={"group": self.group.name},
                        )
                    await _wait_any(self._stop, wait_s=1.0)
                    continue
                failures = 0
                for tp, records in batch.items():
                    self._enqueue(tp, records)
            if time.monotonic() >= next_commit:
                self._commit_soon()  # in the background: fetching never waits for a commit's round trip
                next_commit = time.monotonic() + config.commit_interval_s

    def _enqueue(self, tp: TopicPartition, records: list[ConsumedRecord]) -> None:
        part = self._parts.get(tp)
        if part is None or part.stopped:
            return  # no longer ours: the next owner reads them from the committed offset
        part.queue.extend(records)
        self._buffered += len(records)
        self._consumed.inc(len(records))
        highwater = self._transport.highwater(tp)
        if highwater is not None:
            done = part.done_offset if part.done_offset is not None else records[0].offset
            part.lag.set(max(0, highwater - done))
        if not part.paused and len(part.queue) >= self.config.max_buffered_per_partition:
            part.paused = True
            self._transport.pause({tp})
        part.wakeup.set()

    async def _shutdown(self, background: list[asyncio.Task[None]]) -> None:
        self._stopping = True
        self._stop.set()
        parts = list(self._parts.values())
        await self._stop_partitions(parts, self.config.shutdown_timeout_s)
        if background:
            _, late = await asyncio.wait(background, timeout=self.config.shutdown_timeout_s)
            for task in late:
                task.cancel()
        if self._background_commit is not None:
            await self._background_commit  # bounded by the commit timeout; the final commit below follows it
        await self._commit(parts)
        self._parts.clear()
        await self._transport.stop()
        log.info("group stopped", extra={"group": self.group.name})

    # -- rebalance -----------------------------------------------------------

    async def _on_assigned(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            if tp in self._parts:
                continue
            lag = self._metrics.lag.labels(self.group.name, tp.topic, str(tp.partition))
            part = _Partition(tp, lag, delayed=tp.topic in self._retry_topics)
            part.task = asyncio.create_task(self._dispatch(part), name=f"{self.group.name}:{tp.topic}:{tp.partition}")
            self._parts[tp] = part
        self.assigned.set()
        log.info("partitions assigned", extra={"group": self.group.name, "partitions": sorted(tps)})

    async def _on_revoked(self, tps: set[TopicPartition]) -> None:
        parts = [self._parts[tp] for tp in tps if tp in self._parts]
        await self._stop_partitions(parts, self.config.revoke_timeout_s)
        await self._commit(parts)
        for part in parts:
            self._parts.pop(part.tp, None)
        log.info("partitions revoked", extra={"group": self.group.name, "partitions": sorted(tps)})

    async def _stop_partitions(self, parts: list[_Partition], wait_s: float) -> None:
        """Stop dispatching; wait up to ``wait_s`` for handlers in flight; abandon the rest (invariant 6)."""
        for part in parts:
            part.stopped = True
            part.wakeup.set()
        tasks = [part.task for part in parts if part.task is not None and not part.task.done()]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=wait_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
                log.warning(
                    "handlers still running after %.1f s were abandoned; their records will be redelivered",
                    wait_s,
                    extra={"group": self.group.name},
                )
        for part in parts:
            self._buffered -= len(part.queue)
            part.queue.clear()
        self._room.set()

    # -- dispatch ------------------------------------------------------------

    async def _dispatch(self, part: _Partition) -> None:
        """Handle the partition's records one at a time, in offset order (invariant 3).

        A handler slot is held for a run of up to ``_RUN`` records, then given up (and the
        loop yielded to), so partitions share the slots without a semaphore round per record.
        A retry-tier partition takes one record per slot, once it is due.
        """
        while not part.stopped:
            if not part.queue:
                part.wakeup.clear()
                await part.wakeup.wait()
                continue
            if part.delayed and not await self._until_due(part.queue[0], part):
                return
            async with self._slots:
                try:
                    keep_going = await self._run(part, 1 if part.delayed else _RUN)
                except Exception as exc:
                    # Not a handler failure (those are classified): the runtime itself failed. Stop the
                    # group loudly rather than let this partition stall in silence.
                    log.exception("dispatch of %s:%s failed; stopping the group", part.tp.topic, part.tp.partition)
                    self._background_error = self._background_error or exc
                    self._stop.set()
                    return
            if not keep_going:
                return  # a record was abandoned during shutdown: not committed, redelivered later
            await asyncio.sleep(0)

    async def _run(self, part: _Partition, limit: int) -> bool:  # noqa: PLR0915 - the hot path, inlined
        """Process up to ``limit`` of the partition's records in order; False when it must stop dispatching.

        The common case (decodes, has a handler that succeeds first time, no retry state, no
        parked keys) runs inline: this loop is the per-record cost of the runtime. Everything
        else goes through ``_process`` and ``_attempts``. The handler call is written here and
        in ``_attempts`` on purpose: a shared coroutine around it costs one more coroutine frame
        per record, measured at 230 to 540 ns (2 to 5% of the whole per-record cost at 100k
        records/s), while the histogram's ``observe`` method costs about 30 ns more than
        updating its numbers in place, which is noise.
        """
        queue = part.queue
        decode_dict = self._codec.decode_dict
        as_event = self._codec.decode_dict_as_event
        handler_for = self.group.handler_for
        by_type = self._by_type
        scope = self._scope
        for_record = HandlerContext.for_record
        clock = time.perf_counter
        simple = self._failures.parked is None and self._tracing is None  # traced records go through _process
        retry_states = bool(self._retry_topics)
        resume_at = self.config.max_buffered_per_partition // 2
        count = 0
        try:
            while count < limit and queue and not part.stopped:
                record = queue[0]
                if not simple or (retry_states and RetryState.of(record) is not None):
                    if not await self._process(record):
                        return False
                else:
                    try:
                        spec, fields = decode_dict(record.value or b"")
                        event = as_event(spec, fields)
                    except DecodeError:
                        if not await self._process(record):  # decodes again, then dead-letters it
                            return False
                    else:
                        handler = handler_for(spec.event_type)
                        if handler is not None:
                            labels = by_type.get(spec.event_type) or self._labels(spec.event_type)
                            context = for_record(scope, event, record, 1)
                            cause = set_cause(event)
                            started = clock()
                            try:
                                await handler(event, context)
                            except Exception as exc:  # noqa: BLE001 - the handler boundary: failures are classified
                                error: Exception | None = exc
                            else:
                                error = None
                            finally:
                                reset_cause(cause)
                            if error is None:
                                labels[2].observe(clock() - started)  # its count is also the handled counter
                            elif not await self._attempts(record, event, handler, None, first_error=error):
                                return False
                queue.popleft()
                part.done_offset = record.offset + 1
                self._buffered -= 1
                count += 1
                if part.paused and len(queue) <= resume_at:
                    part.paused = False
                    self._transport.resume({part.tp})
        finally:
            if self._buffered < self.config.max_buffered_total:
                self._room.set()
                if not self._buffered and self.config.commit_when_idle and not self._stopping:
                    self._commit_soon()
        return True

    async def _until_due(self, record: ConsumedRecord, part: _Partition) -> bool:
        """Wait (holding no handler slot) until a retry-tier record is due; False if stopped meanwhile."""
        state = RetryState.of(record)
        while state is not None and not part.stopped and not self._stop.is_set():
            wait_s = state.due_ms / 1000 - time.time()
            if wait_s <= 0:
                return True
            part.wakeup.clear()
            await _wait_any(self._stop, part.wakeup, wait_s=wait_s)
        return state is None or not (part.stopped or self._stop.is_set())

    def _labels(self, event_type: str) -> tuple[Any, Any, Any]:
        labels = self._by_type.get(event_type)
        if labels is None:
            m, name = self._metrics, self.group.name
            labels = (
                m.failed.labels(name, event_type),
                m.retried.labels(name, event_type),
                m.latency.labels(name, event_type),
            )
            self._by_type[event_type] = labels
        return labels

    async def _process(self, record: ConsumedRecord) -> bool:
        """Handle one record; True when it is done (handled, skipped, moved to a retry tier, or dead-lettered)."""
        if self._tracing is not None and self._handles(record):
            with self._tracing.processing(record):  # the current span for the handler, retries and dead letter
                return await self._process_record(record)
        return await self._process_record(record)

    def _handles(self, record: ConsumedRecord) -> bool:
        """Whether the group has a handler for the record's ``event-type`` header (True without one)."""
        for name, value in record.headers:
            if name == "event-type":
                return self.group.handler_for(value.decode("utf-8", "replace")) is not None
        return True

    async def _process_record(self, record: ConsumedRecord) -> bool:
        state = RetryState.of(record) if self._retry_topics else None
        try:
            spec, fields = self._codec.decode_dict(record.value or b"")
            event = self._codec.decode_dict_as_event(spec, fields)
        except DecodeError as exc:
            now = datetime.now(UTC)
            if self._tracing is not None:
                self._tracing.dead_letter(exc, 0, "undecodable")
            return await self._failures.dead_letters.publish(
                record,
                exc,
                state=state,
                attempts=0,
                first_failure=now,
                last_failure=now,
                event=None,
                reason="undecodable",
            )
        if self._tracing is not None:
            self._tracing.decoded(event)
        handler = self.group.handler_for(spec.event_type)
        if handler is None:
            return True
        if self._failures.parked is not None:
            origin = _origin(record, state)
            if (tier := self._failures.parked.tier_to_join(record.key, origin)) is not None:
                # An earlier record of this key waits in the retry tiers: this one follows it there.
                now = datetime.now(UTC)
                attempts = state.attempts if state else 0
                self._failures.parked.park(record.key, origin, tier)
                return await self._failures.tiers.copy_to(
                    record, tier, state=state, attempts=attempts, first_failure=now
                )
        return await self._attempts(record, event, handler, state)

    async def _attempts(
        self,
        record: ConsumedRecord,
        event: Event,
        handler: Handler,
        state: RetryState | None,
        *,
        first_error: Exception | None = None,
    ) -> bool:
        """Try the handler until done: retries in place, then a retry tier or the dead letter.

        ``first_error``: the first attempt already ran (in ``_run``) and failed with it.
        """
        failed, retried, latency = self._labels(event.event_type)
        first_failure: datetime | None = None
        previous = state.attempts if state else 0
        limit = 1 if state else self.config.max_attempts  # a retry tier gives one attempt per tier
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            error: Exception | None = None
            if attempt == 1 and first_error is not None:
                error = first_error
            else:
                context = HandlerContext.for_record(self._scope, event, record, previous + attempt)
                cause = set_cause(event)
                try:
                    await handler(event, context)
                except Exception as exc:  # noqa: BLE001 - the handler boundary: every failure is classified
                    error = exc
                finally:
                    reset_cause(cause)
            if error is None:
                latency.observe(time.perf_counter() - started)  # also counts it as handled
                done = True
            else:
                failed.inc()
                now = datetime.now(UTC)
                first_failure = first_failure or now
                retriable = is_retriable(error, self.group.retriable)
                if retriable and attempt < limit:
                    retried.inc()
                    delay = backoff_delay(attempt, self.config)
                    if self._tracing is not None:
                        self._tracing.retry(error, previous + attempt, delay)
                    if not await self._pause(delay):
                        return False
                    continue
                tier = self._failures.tiers.next_tier(state) if retriable else None
                if tier is not None:
                    retried.inc()
                    if self._tracing is not None:
                        self._tracing.retry_tier(error, previous + attempt, self._failures.tiers.topics[tier - 1])
                    if self._failures.parked is not None:
                        self._failures.parked.park(record.key, _origin(record, state), tier)
                    return await self._failures.tiers.copy_to(
                        record, tier, state=state, attempts=previous + attempt, first_failure=first_failure
                    )
                if self._tracing is not None:
                    self._tracing.dead_letter(error, previous + attempt, "failed")
                done = await self._failures.dead_letters.publish(
                    record,
                    error,
                    state=state,
                    attempts=previous + attempt,
                    first_failure=first_failure,
                    last_failure=now,
                    event=event,
                    reason="failed",
                )
            if done and self._failures.parked is not None:
                self._failures.parked.release(record.key, _origin(record, state))
            return done

    async def _pause(self, seconds: float) -> bool:
        """Sleep between retries; False when shutdown began meanwhile (the record is then abandoned)."""
        await _wait_any(self._stop, wait_s=seconds)
        return not self._stopping and not self._stop.is_set()

    # -- commits -------------------------------------------------------------

    def _commit_soon(self) -> None:
        """Commit the watermarks in the background: now, or right after the commit in flight.

        Asked every ``commit_interval_s`` and, with ``commit_when_idle``, whenever every fetched record is done.
        """
        if self._background_commit is None:
            name = f"{self.group.name}:commit"
            self._background_commit = asyncio.create_task(self._commit_until_current(), name=name)
        else:
            self._commit_again = True

    async def _commit_until_current(self) -> None:
        try:
            again = True
            while again and not self._stopping:
                self._commit_again = False
                await self._commit(list(self._parts.values()))
                again = self._commit_again
        finally:
            self._background_commit = None

    async def _commit(self, parts: list[_Partition]) -> None:
        """Commit each partition's watermark that moved (invariant 1); failures are logged, not fatal."""
        async with self._commit_lock:
            await self._commit_moved(parts)

    async def _commit_moved(self, parts: list[_Partition]) -> None:
        offsets = {
            part.tp: part.done_offset
            for part in parts
            if part.done_offset is not None and part.done_offset != part.committed
        }
        if not offsets:
            return
        try:
            async with asyncio.timeout(self.config.commit_timeout_s):
                await self._transport.commit(offsets)
        except (CommitFailedError, TimeoutError) as exc:
            self._commit_failures += 1
            if self._commit_failures == 1 or self._commit_failures % _FAILURES_LOGGED_EVERY == 0:
                log.warning(
                    "commit failed (%d in a row); records after the last commit will be redelivered: %s",
                    self._commit_failures,
                    exc,
                    extra={"group": self.group.name},
                )
            return
        self._commit_failures = 0
        for part in parts:
            if part.tp in offsets:
                part.committed = offsets[part.tp]

    def watermarks(self) -> dict[TopicPartition, int | None]:
        """The done watermark of each assigned partition (what the next commit will say)."""
        return {tp: part.done_offset for tp, part in self._parts.items()}


def _origin(record: ConsumedRecord, state: RetryState | None) -> str:
    """Where a record first came from (``topic/partition/offset``), the parking's name for it."""
    return "/".join(map(str, state.origin)) if state else f"{record.topic}/{record.partition}/{record.offset}"


async def _wait_any(*events: asyncio.Event, wait_s: float) -> None:
    """Wait until one of ``events`` is set, at most ``wait_s`` seconds."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waiters, return_exceptions=True)
