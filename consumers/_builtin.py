"""The marketplace's consumer groups, by name, for ``eventbus run``."""

from __future__ import annotations

import importlib
from types import ModuleType

from ._database import Migration
from ._group import GroupRegistry
from ._resources import Resources
from ._store import PROCESSED_EVENTS_MIGRATION

__all__ = ["BUILTIN_GROUP_NAMES", "builtin_groups", "builtin_migrations"]

BUILTIN_GROUP_NAMES = ("notifications", "credits", "cache", "analytics", "payments")
"""The names ``eventbus run`` takes, in the order the demo starts them."""


def _modules() -> list[ModuleType]:
    return [importlib.import_module(f"consumers.groups.{name}") for name in BUILTIN_GROUP_NAMES]


def builtin_migrations() -> list[Migration]:
    """Every table the built-in groups and the processed-events store need, in version order."""
    migrations = [PROCESSED_EVENTS_MIGRATION]
    for module in _modules():
        migrations.extend(module.MIGRATIONS)
    return sorted(migrations, key=lambda migration: migration.version)


def builtin_groups(resources: Resources) -> GroupRegistry:
    """The five groups, built on ``resources``. Example: ``builtin_groups(resources).get("credits")``"""
    return GroupRegistry(module.build(resources) for module in _modules())
