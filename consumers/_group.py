"""Declaring a consumer group: a name and its handlers per event type."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from schemas import CATALOG, Catalog, Event
from schemas.errors import ConfigurationError, UnknownEventTypeError

if TYPE_CHECKING:
    from producers import EventPublisher

    from ._context import HandlerContext

__all__ = ["MAX_GROUP_NAME", "BackgroundTask", "ConsumerGroup", "GroupRegistry", "Handler"]

MAX_GROUP_NAME = 200
"""Longest group name (a dead letter's key is its group name)."""
_GROUP_NAME = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_GROUP_NAME}}}")

E = TypeVar("E", bound=Event)
Handler = Callable[[Any, "HandlerContext"], Awaitable[None]]
"""``async def handle(event, ctx) -> None``."""
BackgroundTask = Callable[["EventPublisher", asyncio.Event], Coroutine[Any, Any, None]]
"""``async def work(publisher, stop) -> None``: runs beside the handlers until ``stop`` is set."""


class ConsumerGroup:
    """A named group of handlers; every process running it shares the partitions.

    Example::

        credits = ConsumerGroup("credits")

        @credits.handler(SessionCompleted)
        async def deduct(event: SessionCompleted, ctx: HandlerContext) -> None: ...
    """

    def __init__(
        self, name: str, *, catalog: Catalog = CATALOG, retriable: tuple[type[BaseException], ...] = ()
    ) -> None:
        if _GROUP_NAME.fullmatch(name) is None:
            msg = f"invalid group name {name!r}: 1 to {MAX_GROUP_NAME} ASCII letters, digits, '-', '_' and '.'"
            raise ConfigurationError(msg)
        self.name = name
        self.catalog = catalog
        self.retriable = retriable
        """Exception types (beyond timeouts and connection errors) that the runtime retries."""
        self._handlers: dict[str, Handler] = {}
        self.background_tasks: list[BackgroundTask] = []

    def __repr__(self) -> str:
        return f"ConsumerGroup({self.name!r}, handles={sorted(self._handlers)})"

    def handler(
        self, *event_types: type[Event] | str
    ) -> Callable[[Callable[[E, HandlerContext], Awaitable[None]]], Any]:
        """Register the decorated coroutine for event models or type patterns (``"session:*"``, ``"*"``)."""
        names = self._resolve(event_types)

        def register(func: Callable[[E, HandlerContext], Awaitable[None]]) -> Any:
            taken = [name for name in names if name in self._handlers]
            if taken:  # checked before registering any, so a refused call changes nothing
                msg = f"group {self.name} already has a handler for {', '.join(taken)}"
                raise ConfigurationError(msg)
            self._handlers.update(dict.fromkeys(names, func))
            return func

        return register

    def background(self, func: BackgroundTask) -> BackgroundTask:
        """Run ``func(publisher, stop)`` beside the handlers while the group runs (a decorator).

        Shutdown sets ``stop`` and waits for it within the shutdown timeout.
        """
        self.background_tasks.append(func)
        return func

    def add(self, event_type: type[Event] | str, func: Handler) -> None:
        """Register ``func`` without the decorator."""
        self.handler(event_type)(func)

    def _resolve(self, event_types: Iterable[type[Event] | str]) -> list[str]:
        names: list[str] = []
        for item in event_types:
            if isinstance(item, str):
                matched = [spec.event_type for spec in self.catalog.matching(item)]
                if not matched:
                    raise UnknownEventTypeError(item, list(self.catalog.event_types))
                names.extend(matched)
            else:
                names.append(self.catalog.spec(item.event_type).event_type)
        return names

    def handler_for(self, event_type: str) -> Handler | None:
        """The handler of an event type, if the group has one."""
        return self._handlers.get(event_type)

    @property
    def event_types(self) -> tuple[str, ...]:
        """The handled event types, in catalog order."""
        return tuple(t for t in self.catalog.event_types if t in self._handlers)

    @property
    def topics(self) -> tuple[str, ...]:
        """The entity topics (without prefix) the group subscribes to."""
        return tuple(dict.fromkeys(self.catalog.spec(t).topic for t in self.event_types))


class GroupRegistry:
    """Groups by name, for ``eventbus run NAME``. Example: ``registry.add(credits)``"""

    def __init__(self, groups: Iterable[ConsumerGroup] = ()) -> None:
        self._groups: dict[str, ConsumerGroup] = {}
        for group in groups:
            self.add(group)

    def add(self, group: ConsumerGroup) -> ConsumerGroup:
        """Register a group; names are unique."""
        if group.name in self._groups:
            msg = f"group {group.name} registered twice"
            raise ConfigurationError(msg)
        self._groups[group.name] = group
        return group

    def get(self, name: str) -> ConsumerGroup:
        """The group called ``name``; ``ConfigurationError`` listing known names otherwise."""
        try:
            return self._groups[name]
        except KeyError:
            msg = f"unknown consumer group {name!r}; known: {', '.join(sorted(self._groups)) or 'none'}"
            raise ConfigurationError(msg) from None

    def __iter__(self) -> Iterator[ConsumerGroup]:
        return iter(self._groups.values())

    def __len__(self) -> int:
        return len(self._groups)
