"""Holding back repeated warnings: a broker away makes aiokafka log the same error many times a second.

Example: ``throttle_logs()`` (the runtime does it when a consumer starts)
"""

from __future__ import annotations

import logging
import time

__all__ = ["KAFKA_CLIENT_LOGGERS", "LogThrottle", "throttle_logs"]


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
