"""The marketplace's composition: which consumer groups exist, the tables they need, built on shared resources.

The runtime (``consumers``) is a library that knows no business; the business groups live in
``consumers.groups``, and this module is the one place that names them. ``eventbus run`` and
``eventbus demo`` take their groups from here.

Example::

    await database.migrate(marketplace_migrations())
    registry = marketplace_groups(resources)
    credits = registry.get("credits")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from consumers import OUTBOX_MIGRATION, PROCESSED_EVENTS_MIGRATION, ConsumerGroup, GroupRegistry, Migration, Resources
from consumers.groups import analytics, cache, notifications, payments
from consumers.groups import credits as credit

__all__ = ["MARKETPLACE_GROUP_NAMES", "MarketplaceGroup", "marketplace_groups", "marketplace_migrations"]


@dataclass(frozen=True, slots=True)
class MarketplaceGroup:
    """One business group: its name, its tables and how it is built on the shared resources."""

    name: str
    migrations: Sequence[Migration]
    build: Callable[[Resources], ConsumerGroup]


_GROUPS: tuple[MarketplaceGroup, ...] = (
    MarketplaceGroup(notifications.GROUP_NAME, notifications.MIGRATIONS, notifications.build),
    MarketplaceGroup(credit.GROUP_NAME, credit.MIGRATIONS, credit.build),
    MarketplaceGroup(cache.GROUP_NAME, cache.MIGRATIONS, cache.build),
    MarketplaceGroup(analytics.GROUP_NAME, analytics.MIGRATIONS, analytics.build),
    MarketplaceGroup(payments.GROUP_NAME, payments.MIGRATIONS, payments.build),
)

MARKETPLACE_GROUP_NAMES: tuple[str, ...] = tuple(group.name for group in _GROUPS)
"""The names ``eventbus run`` takes, in the order the demo starts them."""


def marketplace_migrations() -> list[Migration]:
    """Every table the marketplace's groups, the processed-events store and the outbox need, in version order."""
    migrations = [PROCESSED_EVENTS_MIGRATION, OUTBOX_MIGRATION]
    for group in _GROUPS:
        migrations.extend(group.migrations)
    return sorted(migrations, key=lambda migration: migration.version)


def marketplace_groups(resources: Resources) -> GroupRegistry:
    """The five groups, built on ``resources``. Example: ``marketplace_groups(resources).get("credits")``"""
    return GroupRegistry(group.build(resources) for group in _GROUPS)
