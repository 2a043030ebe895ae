"""Classifying handler failures and spacing retries."""

from __future__ import annotations

import random

from ._config import RuntimeConfig

__all__ = ["backoff_delay", "is_retriable"]


def is_retriable(exc: BaseException, extra: tuple[type[BaseException], ...] = ()) -> bool:
    """Whether trying the handler again may succeed.

    An error that says (``retriable`` attribute, as every ``EventBusError`` has)
    is believed; otherwise timeouts, connection errors and the group's ``extra``
    types are retriable and everything else (validation, business rules, bugs)
    is fatal. Example: ``is_retriable(TimeoutError())``
    """
    stated = getattr(exc, "retriable", None)
    if isinstance(stated, bool):
        return stated
    return isinstance(exc, (TimeoutError, ConnectionError, *extra))


def backoff_delay(attempt: int, config: RuntimeConfig, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed ``attempt`` (1-based): exponential, capped, with jitter."""
    base = min(config.backoff_max_s, config.backoff_initial_s * config.backoff_multiplier ** (attempt - 1))
    spread = config.backoff_jitter
    factor = 1.0 + spread * (2.0 * (rng or random).random() - 1.0)
    return max(0.0, base * factor)
