"""Where a failed record goes: a delayed retry topic (``_retry_tiers.py``) or the dead-letter topic
(``_dead_letter.py``), each published until the broker acknowledges it (``_acked.py``).

A record is done only once the broker acknowledged its copy in the retry topic or its dead
letter (invariant 2); until then the partition does not advance.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from producers import EventPublisher

from ._acked import UntilAcked
from ._dead_letter import DeadLetterPublisher
from ._metrics import RuntimeMetrics
from ._retry_tiers import ParkedKeys, RetryTiers

__all__ = ["FailureRouter"]


class FailureRouter:
    """The group's retry tiers (and the keys parked behind them) and dead letters, sharing one acknowledgement loop.

    Example: ``router.tiers.next_tier(state)``, ``await router.dead_letters.publish(record, exc, ...)``
    """

    def __init__(
        self,
        *,
        group: str,
        publisher: EventPublisher,
        metrics: RuntimeMetrics,
        retry_topics: Sequence[str],
        retry_delays_s: Sequence[float],
        pause: Callable[[float], Awaitable[bool]],
        retry_pause_s: float,
        keep_key_order: bool = False,
    ) -> None:
        acked = UntilAcked(group, pause, retry_pause_s)
        self.parked = ParkedKeys() if keep_key_order else None
        """Later records of a key wait behind its record in the tiers (``RuntimeConfig.retry_keep_key_order``)."""
        self.tiers = RetryTiers(publisher=publisher, topics=retry_topics, delays_s=retry_delays_s, acked=acked)
        self.dead_letters = DeadLetterPublisher(group=group, publisher=publisher, metrics=metrics, acked=acked)
