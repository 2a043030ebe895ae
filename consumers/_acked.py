"""Publishing a retry copy or a dead letter until the broker acknowledges it (invariant 2).

A failed record is done only once its copy is acknowledged; until then its partition does
not advance, and says so loudly. Example: ``await UntilAcked("credits", pause, 1.0)(publish, record, "dead letter")``
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from schemas.errors import EventBusError

from ._transport import ConsumedRecord

__all__ = ["UntilAcked"]

log = logging.getLogger("eventbus.consumer")


class UntilAcked:
    """Retries a publish every ``retry_pause_s`` until it is acknowledged, or ``pause`` says the group stops."""

    def __init__(self, group: str, pause: Callable[[float], Awaitable[bool]], retry_pause_s: float) -> None:
        self.group = group
        self._pause = pause
        self._retry_pause_s = retry_pause_s

    async def __call__(self, publish: Callable[[], Awaitable[object]], record: ConsumedRecord, what: str) -> bool:
        """True once acknowledged; False when the group stops before that."""
        while True:
            try:
                await publish()
            except EventBusError as exc:
                log.error(  # noqa: TRY400 - the traceback adds nothing; the partition's progress stops here
                    "%s NOT ACKNOWLEDGED; partition %s:%s stalls until it is: %s",
                    what.upper(),
                    record.topic,
                    record.partition,
                    exc,
                    extra={"group": self.group, "offset": record.offset},
                )
                if not await self._pause(self._retry_pause_s):
                    return False
            else:
                return True
