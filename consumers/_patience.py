"""Retrying what depends on a service that may blink: the database, Redis, SMTP.

``Patience`` is for the groups and their background tasks: it retries an operation whose
failures are transient (a lock conflict, a database restart, Redis unreachable) with
exponential backoff, logs the trouble at most once every few seconds (no traceback), and
gives up with ``RetryBoundExceededError`` once the dependency has been failing for longer
than a bound (or never, for a background worker that should wait as long as it runs).
The runtime's own in-place attempts of a handler are in ``_backoff.py``.

Example: ``row = await Patience("database").call(lambda: claim(db), what="claiming a payment")``
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from schemas.errors import EventBusError

from ._backoff import is_retriable

__all__ = ["BackgroundTaskError", "Patience", "RetryBoundExceededError", "RetryPolicy"]

T = TypeVar("T")

log = logging.getLogger("eventbus.retry")


class RetryBoundExceededError(EventBusError):
    """An operation kept failing transiently for longer than its bound; ``__cause__`` is the last failure.

    Still ``retriable`` (later it may work: a retry tier or a replay can take it), but the
    wait in place is over. Example: ``RetryBoundExceededError("redis DEL", "cache", failing_s=31, bound_s=30,
    attempts=9, cause=exc)``
    """

    retriable = True

    def __init__(
        self, what: str, dependency: str, *, failing_s: float, bound_s: float, attempts: int, cause: BaseException
    ) -> None:
        self.what = what
        self.dependency = dependency
        self.failing_s = failing_s
        self.bound_s = bound_s
        self.attempts = attempts
        super().__init__(
            f"{what}: {dependency} kept failing for {failing_s:.1f} s, longer than the {bound_s:g} s bound"
            f" ({attempts} attempts here); last error: {type(cause).__name__}: {cause}"
        )


class BackgroundTaskError(EventBusError):
    """A group's background task stopped on a failure that retrying cannot fix; names group, task and cause.

    Example: ``raise BackgroundTaskError("payments", "payment_worker_0", exc) from exc``
    """

    def __init__(self, group: str, task: str, cause: BaseException) -> None:
        self.group = group
        self.task = task
        super().__init__(f"group {group}, background task {task}: {type(cause).__name__}: {cause}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How ``Patience`` spaces its tries and when it gives up. Example: ``RetryPolicy(bound_s=30.0)``"""

    initial_s: float = 0.05
    """Pause after the first failure; multiplied by ``multiplier`` per failure, at most ``max_s``."""
    max_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2
    """Each pause is multiplied by a random factor in [1 - jitter, 1 + jitter]."""
    bound_s: float | None = 60.0
    """Give up once the dependency has been failing this long; None: retry until stopped."""
    log_every_s: float = 5.0
    """At most one warning per this many seconds per ``Patience`` (its dependency), however many callers."""

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after ``failures`` (1-based) failures in a row."""
        base = min(self.max_s, self.initial_s * self.multiplier ** (failures - 1))
        return max(0.0, base * (1.0 + self.jitter * (2.0 * (rng or random).random() - 1.0)))


@dataclass
class Patience:
    """Retries operations on one dependency while their failures are transient, within ``policy.bound_s``.

    The bound counts from the first failure of the operation, or from the start of the
    dependency's outage if that is older: once the dependency has been failing (for every
    caller, with no success in between) for longer than the bound, a new operation fails after
    one try instead of waiting the whole bound again. Non-retriable failures are raised at once.

    Example: ``row = await Patience("database").call(lambda: claim(db), what="claiming a payment")``
    """

    dependency: str
    """What is being waited for, in log lines and errors: ``database``, ``redis``, ``smtp``."""
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    context: Mapping[str, object] = field(default_factory=dict)
    """Log ``extra`` fields (``group``, ``task``) of every line this logs."""
    logger: logging.Logger = log
    _failing_since: float | None = field(default=None, init=False, repr=False)
    _last_failure: float = field(default=0.0, init=False, repr=False)
    _next_log: float = field(default=0.0, init=False, repr=False)
    _warned: bool = field(default=False, init=False, repr=False)

    @property
    def _stale_s(self) -> float:
        # retrying callers fail at least once per max_s; a longer silence means nobody is watching the outage
        return 2 * self.policy.max_s + 1.0

    @property
    def failing_s(self) -> float:
        """How long the dependency has been failing with no success since (0 when it is fine)."""
        now = time.monotonic()
        if self._failing_since is None or now - self._last_failure > self._stale_s:
            return 0.0
        return now - self._failing_since

    async def call(self, op: Callable[[], Awaitable[T]], *, what: str, stop: asyncio.Event | None = None) -> T:
        """``await op()`` until it succeeds; retriable failures are retried with backoff.

        Raises the failure itself when it is not retriable, or when ``stop`` is set during a
        pause; ``RetryBoundExceededError`` (from the last failure) past the bound.
        """
        failures = 0
        first: float | None = None
        while True:
            try:
                result = await op()
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                failures += 1
                now = time.monotonic()
                first = now if first is None else first
                if self._failing_since is None or now - self._last_failure > self._stale_s:
                    self._failing_since = now  # a new outage, or nobody has seen this one for a while
                self._last_failure = now
                failing_s = now - min(first, self._failing_since)
                bound = self.policy.bound_s
                if bound is not None and failing_s >= bound:
                    raise RetryBoundExceededError(
                        what, self.dependency, failing_s=failing_s, bound_s=bound, attempts=failures, cause=exc
                    ) from exc
                delay = self.policy.delay(failures)
                self._report(what, exc, failures, failing_s, delay)
                if not await _pause(delay, stop):
                    raise
            else:
                self._recovered()
                return result

    def _report(self, what: str, exc: Exception, failures: int, failing_s: float, delay: float) -> None:
        now = time.monotonic()
        if now < self._next_log:
            return
        self._next_log = now + self.policy.log_every_s
        self._warned = True
        bound = self.policy.bound_s
        limit = f"gives up after {bound:g} s" if bound is not None else "retries until stopped"
        self.logger.warning(
            "%s: %s failing for %.1f s (%d tries), retrying in %.2f s (%s): %s: %s",
            what,
            self.dependency,
            failing_s,
            failures,
            delay,
            limit,
            type(exc).__name__,
            exc,
            extra={**self.context, "dependency": self.dependency},
        )

    def _recovered(self) -> None:
        if self._failing_since is None:
            return
        if self._warned:
            self.logger.info(
                "%s is back after %.1f s",
                self.dependency,
                time.monotonic() - self._failing_since,
                extra={**self.context, "dependency": self.dependency},
            )
        self._failing_since = None
        self._warned = False


async def _pause(seconds: float, stop: asyncio.Event | None) -> bool:
    """Sleep ``seconds``, or less when ``stop`` is set meanwhile; False when stopping."""
    if stop is None:
        await asyncio.sleep(seconds)
        return True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return not stop.is_set()
