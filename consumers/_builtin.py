"""The marketplace's consumer groups, by name, for ``eventbus run``."""

from __future__ import annotations

from ._group import GroupRegistry

__all__ = ["BUILTIN_GROUPS"]

BUILTIN_GROUPS = GroupRegistry()
"""notifications, credits, cache, analytics and payments (registered by their modules)."""
