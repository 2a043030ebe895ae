"""What a handler gets besides the event: where it came from, and a way to publish follow-ups."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, TypeVar
from uuid import NAMESPACE_URL, UUID, uuid5

from producers import EventPublisher, PublishResult
from schemas import Event
from schemas.errors import ConfigurationError

from ._transport import ConsumedRecord, PlainRecord

if TYPE_CHECKING:
    from ._store import Effects, ProcessedEventStore

__all__ = ["FOLLOW_UP_NAMESPACE", "HandlerContext", "HandlerScope", "follow_up_id"]

E = TypeVar("E", bound=Event)

FOLLOW_UP_NAMESPACE = uuid5(NAMESPACE_URL, "https://eventbus.coaching/follow-up")
"""UUIDv5 namespace of follow-up event ids."""


def follow_up_id(group: str, source_id: UUID, event_type: str, index: int) -> UUID:
    """The event id of the ``index``-th follow-up of ``event_type`` that ``group`` publishes for ``source_id``.

    The same on every redelivery, so downstream consumers deduplicate it.
    Example: ``follow_up_id("credits", event.event_id, "user:credits_updated", 0)``
    """
    return uuid5(FOLLOW_UP_NAMESPACE, f"{group}/{source_id}/{event_type}/{index}")


class HandlerScope(NamedTuple):
    """What every handler call of a group shares: the group's name, its publisher and its store.

    Example: ``HandlerScope("credits", publisher, store)``
    """

    group: str
    publisher: EventPublisher
    store: ProcessedEventStore | None = None


class HandlerContext:
    """Where the event came from, which attempt this is, and how to publish follow-ups.

    ``publish`` gives each follow-up a deterministic event id, ``causation_id`` =
    this event's id and this event's correlation id.
    Example: ``await ctx.publish(UserCreditsUpdated(...))``
    """

    __slots__ = ("_counts", "_origin", "_scope", "attempt", "event")

    def __init__(
        self,
        *,
        group: str,
        event: Event,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        attempt: int,
        publisher: EventPublisher,
        store: ProcessedEventStore | None = None,
    ) -> None:
        self._scope = HandlerScope(group, publisher, store)
        self._origin: ConsumedRecord = PlainRecord(topic, partition, offset, -1, key, None, headers)
        self.event = event
        self.attempt = attempt
        self._counts: Counter[str] | None = None  # made on the first follow-up: most handlers publish none

    @classmethod
    def for_record(cls, scope: HandlerScope, event: Event, record: ConsumedRecord, attempt: int) -> HandlerContext:
        """The context of ``record``'s handler call: the runtime's per-record path (five slots set, no keywords).

        Example: ``HandlerContext.for_record(HandlerScope("credits", publisher), event, record, 1).offset``
        """
        context = cls.__new__(cls)
        context._scope = scope
        context._origin = record
        context.event = event
        context.attempt = attempt
        context._counts = None
        return context

    @property
    def group(self) -> str:
        """The consumer group handling the event."""
        return self._scope.group

    @property
    def topic(self) -> str:
        """The topic the record was read from."""
        return self._origin.topic

    @property
    def partition(self) -> int:
        """The partition the record was read from."""
        return self._origin.partition

    @property
    def offset(self) -> int:
        """The record's offset."""
        return self._origin.offset

    @property
    def key(self) -> bytes | None:
        """The record's key."""
        return self._origin.key

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]:
        """The record's headers."""
        return self._origin.headers

    @property
    def correlation_id(self) -> str:
        """The flow's correlation id (the event's own id when it started the flow)."""
        return self.event.metadata.correlation_id or str(self.event.metadata.event_id)

    def follow_up(self, event: E) -> E:
        """``event`` with the metadata of a follow-up of this context's event (see ``follow_up_id``)."""
        if self._counts is None:
            self._counts = Counter()
        index = self._counts[event.event_type]
        self._counts[event.event_type] = index + 1
        source = self.event.metadata
        return event.with_metadata(
            event_id=follow_up_id(self.group, source.event_id, event.event_type, index),
            causation_id=source.event_id,
            correlation_id=self.correlation_id,
        )

    async def publish(self, event: Event) -> PublishResult:
        """Publish a follow-up and wait for the broker's acknowledgement."""
        return await self._scope.publisher.publish(self.follow_up(event))

    def effects(self) -> Effects:
        """A transaction that records (group, event id) with the handler's writes: effects happen once.

        Example::

            async with ctx.effects() as tx:
                if tx.first_time:
                    await tx.execute("UPDATE ...", {...})
        """
        store = self._scope.store
        if store is None:
            msg = f"group {self.group} runs without a processed-events store (EVENTBUS_DATABASE_URL)"
            raise ConfigurationError(msg)
        return store.effects(self.group, self.event.event_id)
