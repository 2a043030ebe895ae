"""The app that tests/integration/test_runtime_processes.py runs in real ``eventbus run`` processes.

``eventbus run $EVENTBUS_TEST_GROUP --app tests.integration.runtime_app:REGISTRY`` handles ``session:created``:
each call appends ``<event id> <partition> <offset>`` to the file ``$EVENTBUS_TEST_LOG`` (raw deliveries,
duplicates included), sleeps ``$EVENTBUS_TEST_DELAY_S``, then records the event in ``runtime_process_events``
inside ``ctx.effects()``, so each event is recorded once whatever the redeliveries.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from consumers import ConsumerGroup, GroupRegistry, HandlerContext
from schemas import SessionCreated

__all__ = ["GROUP", "REGISTRY", "TABLE_DDL"]

TABLE_DDL = (
    "CREATE TABLE IF NOT EXISTS runtime_process_events (group_name VARCHAR(200) NOT NULL,"
    " event_id VARCHAR(36) NOT NULL, topic VARCHAR(255) NOT NULL, partition_no INTEGER NOT NULL,"
    " offset_no BIGINT NOT NULL)"
)
"""No unique key on purpose: a second application of an effect would show as a second row."""

GROUP = ConsumerGroup(os.environ.get("EVENTBUS_TEST_GROUP", "runtime-processes"))
REGISTRY = GroupRegistry([GROUP])


def _log_delivery(line: str) -> None:
    path = os.environ.get("EVENTBUS_TEST_LOG")
    if path:
        with Path(path).open("a", encoding="utf-8") as log:
            log.write(line)


@GROUP.handler(SessionCreated)
async def record(event: SessionCreated, ctx: HandlerContext) -> None:
    """Log the delivery, then apply the effect once."""
    _log_delivery(f"{event.event_id} {ctx.partition} {ctx.offset}\n")
    delay = float(os.environ.get("EVENTBUS_TEST_DELAY_S") or 0)
    if delay:
        await asyncio.sleep(delay)
    async with ctx.effects() as tx:
        if tx.first_time:
            await tx.execute(
                "INSERT INTO runtime_process_events (group_name, event_id, topic, partition_no, offset_no)"
                " VALUES (:g, :e, :t, :p, :o)",
                {"g": ctx.group, "e": str(event.event_id), "t": ctx.topic, "p": ctx.partition, "o": ctx.offset},
            )
