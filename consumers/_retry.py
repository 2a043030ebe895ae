"""Classifying failures, spacing retries, and retrying what depends on a service that may blink.

``is_retriable`` and ``backoff_delay`` are the runtime's (a handler's in-place attempts).
``Patience`` is for the groups and their background tasks: it retries an operation whose
failures are transient (a lock conflict, a database restart, Redis unreachable) with
exponential backoff, logs the trouble at most once every few seconds (no traceback), and
gives up with ``RetryBoundExceededError`` once the dependency has been failing for longer
than a bound (or never, for a background worker that should wait as long as it runs).
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

from ._config import RuntimeConfig
from ._database import is_transient_database_error

__all__ = [
    "KAFKA_CLIENT_LOGGERS",
    "BackgroundTaskError",
    "LogThrottle",
    "Patience",
    "RetryBoundExceededError",
    "RetryPolicy",
    "backoff_delay",
    "is_retriable",
    "throttle_logs",
]

T = TypeVar("T")

log = logging.getLogger("eventbus.retry")


def is_retriable(exc: BaseException, extra: tuple[type[BaseException], ...] = ()) -> bool:
    """Whether trying the handler again may succeed.

    An error that says (``retriable`` attribute, as every ``EventBusError`` has)
    is believed; otherwise timeouts, connection errors, transient database errors
    (lock conflicts, deadlocks, serialization failures, lost connections: see
    ``is_transient_database_error``) and the group's ``extra`` types are retriable
    and everything else (validation, business rules, bugs) is fatal.
    Example: ``is_retriable(TimeoutError())``
    """
    stated = getattr(exc, "retriable", None)
    if isinstance(stated, bool):
        return stated
    return isinstance(exc, (TimeoutError, ConnectionError, *extra)) or is_transient_database_error(exc)


def backoff_delay(attempt: int, config: RuntimeConfig, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed ``attempt`` (1-based): exponential, capped, with jitter."""
    base = min(config.backoff_max_s, config.backoff_initial_s * config.backoff_multiplier ** (attempt - 1))
    spread = config.backoff_jitter
    factor = 1.0 + spread * (2.0 * (rng or random).random() - 1.0)
    return max(0.0, base * factor)


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


KAFKA_CLIENT_LOGGERS = (
    "aiokafka",
    "aiokafka.admin.client",
    "aiokafka.cluster",
    "aiokafka.conn",
    "aiokafka.consumer.consumer",
    "aiokafka.consumer.fetcher",
    "aiokafka.consumer.group_coordinator",
    "aiokafka.producer.producer",
    "aiokafka.producer.sender",
)
"""aiokafka's loggers: with the broker away, together they log about 200 lines a second."""


class LogThrottle(logging.Filter):
    """Lets the first warning or error of each kind through, then one per ``every_s`` seconds.

    A kind is (logger, level, message template). The line let through after a quiet spell
    says how many like it were held back. Info and debug lines are never held back.
    Example: ``logging.getLogger("aiokafka").addFilter(LogThrottle(every_s=5))``
    """

    _MAX_KINDS = 1_000

    def __init__(self, every_s: float = 5.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._kinds: dict[tuple[str, int, str], list[float]] = {}  # kind -> [next allowed time, held back]

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` goes out (its message may get the count of lines held back)."""
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        state = self._kinds.get(key)
        if state is not None and now < state[0]:
            state[1] += 1
            return False
        if len(self._kinds) >= self._MAX_KINDS:
            self._kinds.clear()
        held = int(state[1]) if state is not None else 0
        self._kinds[key] = [now + self.every_s, 0]
        if held:
            record.msg = f"{record.msg} ({held} more like this held back in {self.every_s:g} s)"
        return True


def throttle_logs(names: tuple[str, ...] = KAFKA_CLIENT_LOGGERS, every_s: float = 5.0) -> None:
    """Put a ``LogThrottle`` on each logger in ``names`` (once: calling again changes nothing).

    The runtime does it for the Kafka client, whose loggers would otherwise repeat the same
    connection error many times a second while a broker is away. Example: ``throttle_logs()``
    """
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, LogThrottle) for existing in logger.filters):
            logger.addFilter(LogThrottle(every_s))
