"""The runtime's in-place retries of a handler: which failures are worth another attempt, and how long to wait.

Example: ``if is_retriable(exc): await asyncio.sleep(backoff_delay(attempt, config))``
"""

from __future__ import annotations

import random

from ._config import RuntimeConfig
from ._database import is_transient_database_error

__all__ = ["backoff_delay", "is_retriable"]


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
