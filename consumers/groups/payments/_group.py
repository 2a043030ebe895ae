"""The ``payments`` consumer group: enqueue on ``payment:process_required``, charge in background workers.

The handler only inserts the request into ``payments_queue`` (once per event
id, in the effects transaction), so the partition drains in milliseconds per
record however slow the gateway is. ``payment_workers`` background workers
claim the most urgent pending row (high priority first, then arrival order),
charge it through the ``PaymentGateway`` (idempotency key = payment id),
publish ``payment:processed`` / ``payment:failed`` with a deterministic event
id, wait for the broker's acknowledgement, and only then mark the row. A
worker that dies leaves its row ``charging``; after the lease another worker
takes it again, the gateway returns the same outcome and the same event id is
republished (downstream deduplicates it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar
from uuid import UUID

from consumers import (
    BackgroundTask,
    BackgroundTaskError,
    ConsumerGroup,
    HandlerContext,
    Patience,
    Resources,
    RetryPolicy,
    follow_up_id,
    is_retriable,
)
from producers import EventPublisher
from schemas import Event, PaymentFailed, PaymentProcessed, PaymentProcessRequired

from ._gateway import ChargeResult, PaymentDeclinedError, PaymentGateway, SimulatedGateway
from ._queue import (
    ENQUEUE_SQL,
    PRIORITY_RANKS,
    QueuedPayment,
    claim,
    enqueue_params,
    finish,
    reclaim_expired,
    release,
    renew,
)

__all__ = ["GROUP_NAME", "WorkerOptions", "build"]

GROUP_NAME = "payments"

log = logging.getLogger("eventbus.payments")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How the payment workers wait, retry and lease. Example: ``WorkerOptions(lease_s=30.0)``"""

    poll_s: float = 0.2
    """Idle wait between looks at the queue (a new request wakes idle workers at once)."""
    lease_s: float = 60.0
    """A row charging for longer (without a renewed attempt) is taken again by another worker."""
    charge_timeout_s: float = 20.0
    """One gateway call longer than this is a transient failure."""
    max_charge_attempts: int = 5
    """Gateway tries for transient failures before the payment fails with ``gateway_unavailable``."""
    retry_backoff_s: float = 0.2
    """First pause after a transient failure; doubles per try, at most ``retry_backoff_max_s``."""
    retry_backoff_max_s: float = 5.0


class _Wakeup:
    """An ``asyncio.Event`` for the running loop (the group may outlive one loop, e.g. in tests)."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._event is None or self._loop is not loop:
            self._event, self._loop = asyncio.Event(), loop
        return self._event


async def _wait_either(first: asyncio.Event, second: asyncio.Event, timeout_s: float) -> None:
    """Wait until one of the events is set, at most ``timeout_s``."""
    waiters = [asyncio.create_task(first.wait()), asyncio.create_task(second.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def _pause(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless stopping; True when the worker should go on."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return not stop.is_set()


def result_event(job: QueuedPayment, outcome: ChargeResult | PaymentDeclinedError) -> Event:
    """The ``payment:processed`` / ``payment:failed`` event of a charge outcome, with its deterministic metadata.

    The event id is ``follow_up_id("payments", request id, type, 0)``: the same on every republish.
    Example: ``result_event(job, ChargeResult("txn_1", job.amount, job.currency)).event_id``
    """
    common = {
        "payment_id": job.payment_id,
        "session_id": job.session_id,
        "user_id": job.user_id,
        "amount": job.amount,
        "currency": job.currency,
    }
    event: Event
    if isinstance(outcome, ChargeResult):
        event = PaymentProcessed(**common, transaction_id=outcome.transaction_id)
    else:
        event = PaymentFailed(**common, error=outcome.message, error_code=outcome.code)
    source = UUID(job.source_event_id)
    return event.with_metadata(
        event_id=follow_up_id(GROUP_NAME, source, event.event_type, 0),
        causation_id=source,
        correlation_id=job.correlation_id or str(source),
    )


class _Payments:
    """The group's state shared by the handler and the workers: database, gateway, wake-up signal."""

    def __init__(
        self, resources: Resources, gateway: PaymentGateway, options: WorkerOptions, retry: RetryPolicy | None
    ) -> None:
        self.database = resources.database
        self.gateway = gateway
        self.opts = options
        self.wakeup = _Wakeup()
        self.next_reclaim = 0.0  # shared by the workers: one reclaim pass per interval is enough
        self.storage = Patience("database", retry or RetryPolicy(), context={"group": GROUP_NAME})
        # The workers wait for the database and the broker as long as they run (one warning every few s).
        waiting = RetryPolicy(initial_s=options.retry_backoff_s, max_s=options.retry_backoff_max_s, bound_s=None)
        context = {"group": GROUP_NAME, "task": "payment workers"}
        self.worker_db = Patience("database", waiting, context=context, logger=log)
        self.worker_broker = Patience("broker", waiting, context=context, logger=log)

    async def enqueue(self, event: PaymentProcessRequired, ctx: HandlerContext) -> None:
        """Insert the request into the queue (once per event id, and once per payment id)."""

        async def once() -> None:
            async with ctx.effects() as tx:
                if tx.first_time:
                    params = enqueue_params(
                        self.database,
                        payment_id=event.payment_id,
                        session_id=event.session_id,
                        user_id=event.user_id,
                        amount=event.amount,
                        currency=event.currency,
                        priority_rank=PRIORITY_RANKS[event.priority.value],
                        correlation_id=ctx.correlation_id,
                        source_event_id=str(event.event_id),
                    )
                    await tx.execute(ENQUEUE_SQL, params)

        await self.storage.call(once, what=f"enqueueing payment {event.payment_id}")
        self.wakeup.get().set()

    async def _db(self, op: Callable[[], Awaitable[T]], what: str, stop: asyncio.Event) -> T:
        return await self.worker_db.call(op, what=what, stop=stop)

    async def charge(self, job: QueuedPayment, stop: asyncio.Event) -> ChargeResult | PaymentDeclinedError | None:
        """The gateway's outcome after bounded retries of transient failures; None when stopping."""
        opts = self.opts
        failure: BaseException | None = None
        for attempt in range(1, opts.max_charge_attempts + 1):
            renewing = partial(renew, self.database, job.payment_id)
            if attempt > 1 and not await self._db(renewing, f"renewing the lease of payment {job.payment_id}", stop):
                return None  # another worker took the row (our lease ran out)
            try:
                return await asyncio.wait_for(
                    self.gateway.charge(job.payment_id, job.amount, job.currency, idempotency_key=job.payment_id),
                    timeout=opts.charge_timeout_s,
                )
            except PaymentDeclinedError as exc:
                return exc
            except Exception as exc:  # noqa: BLE001 - any other gateway failure is transient, up to the bound
                failure = exc
                log.warning(
                    "payment %s: gateway attempt %d failed: %r",
                    job.payment_id,
                    attempt,
                    exc,
                    extra={"group": GROUP_NAME, "task": "payment workers"},
                )
            if attempt < opts.max_charge_attempts:
                delay = min(opts.retry_backoff_s * 2 ** (attempt - 1), opts.retry_backoff_max_s)
                if not await _pause(stop, delay):
                    return None
        reason = f"gateway unavailable after {opts.max_charge_attempts} attempts: {failure!r}"
        return PaymentDeclinedError(reason, code="gateway_unavailable")

    async def process(self, job: QueuedPayment, publisher: EventPublisher, stop: asyncio.Event) -> None:
        """Charge, publish the result (acknowledged), then mark the row.

        The database and the broker are waited for in place (the row stays ours): a result
        published is always marked, so it is not charged and published a second time.
        """
        payment = job.payment_id
        outcome = await self.charge(job, stop)
        if outcome is None:
            await self._db(partial(release, self.database, payment), f"releasing payment {payment}", stop)
            return
        event = result_event(job, outcome)
        await self.worker_broker.call(
            partial(publisher.publish, event), what=f"publishing {event.event_type} of {payment}", stop=stop
        )
        if isinstance(outcome, ChargeResult):
            marking = partial(finish, self.database, payment, transaction_id=outcome.transaction_id)
        else:
            marking = partial(finish, self.database, payment, error=outcome.message, error_code=outcome.code)
        await self._db(marking, f"marking payment {payment} {event.event_type}", stop)
        log.debug("payment %s: %s", payment, event.event_type)

    async def step(self, publisher: EventPublisher, stop: asyncio.Event) -> None:
        """Reclaim expired leases when due, then charge one payment or wait for work."""
        wakeup = self.wakeup.get()
        if time.monotonic() >= self.next_reclaim:
            self.next_reclaim = time.monotonic() + max(self.opts.lease_s / 4, self.opts.poll_s)
            reclaiming = partial(reclaim_expired, self.database, self.opts.lease_s)
            if reclaimed := await self._db(reclaiming, "reclaiming expired leases", stop):
                log.warning(
                    "reclaimed %d payments whose worker stopped charging them", reclaimed, extra={"group": GROUP_NAME}
                )
        wakeup.clear()  # before claiming: a request enqueued from now on wakes the wait below
        job = await self._db(partial(claim, self.database), "claiming a payment", stop)
        if job is None:
            await _wait_either(wakeup, stop, self.opts.poll_s)
            return
        await self.process(job, publisher, stop)

    def worker(self, index: int) -> BackgroundTask:
        """A background task that charges payments until ``stop`` is set.

        Transient failures (database, broker) are waited out with backoff, logged at most once
        every few seconds; any other failure ends the task with a ``BackgroundTaskError`` naming
        the group, the task and the cause, which stops the group (the runtime logs it once).
        """
        name = f"payment_worker_{index}"

        async def work(publisher: EventPublisher, stop: asyncio.Event) -> None:
            log.info("payment worker %d started", index, extra={"group": GROUP_NAME, "task": name})
            try:
                while not stop.is_set():
                    await self.worker_db.call(partial(self.step, publisher, stop), what=name, stop=stop)
            except Exception as exc:
                if not (stop.is_set() and is_retriable(exc)):  # else: stopping while waiting for a dependency
                    raise BackgroundTaskError(GROUP_NAME, name, exc) from exc
            log.info("payment worker %d stopped", index, extra={"group": GROUP_NAME, "task": name})

        work.__name__ = name
        return work


def build(
    resources: Resources,
    *,
    gateway: PaymentGateway | None = None,
    options: WorkerOptions | None = None,
    retry: RetryPolicy | None = None,
) -> ConsumerGroup:
    """The ``payments`` group: the enqueue handler plus ``settings.payment_workers`` workers.

    ``gateway`` defaults to a ``SimulatedGateway`` from the settings (latency, failure rate, seed).
    ``retry`` bounds the handler's waits for the database (default 60 s); the workers wait as long
    as they run. Example: ``group = build(resources, gateway=SimulatedGateway(latency_s=0.01, failure_rate=0.0))``
    """
    settings = resources.settings
    charger = gateway or SimulatedGateway(
        settings.gateway_latency_s, settings.gateway_failure_rate, settings.gateway_seed
    )
    payments = _Payments(resources, charger, options or WorkerOptions(), retry)
    group = ConsumerGroup(GROUP_NAME)
    group.add(PaymentProcessRequired, payments.enqueue)
    for index in range(settings.payment_workers):
        group.background(payments.worker(index))
    return group
