"""The ``cache`` group: drop cached coach data when a coach changes.

On ``coach:profile_updated``, ``coach:rating_updated`` and ``coach:status_changed`` it deletes
from ``resources.cache`` (Redis in production) the coach's profile key and the coach list key,
then publishes ``cache:coach_data_refreshed(coach_id, invalidated_keys)`` so pages showing the
coach can reload it.

The key names are shared with the web application, which fills the cache; it must use
exactly these:

- ``eventbus:coach:{coach_id}:profile`` — one coach's profile (``coach_profile_key(coach_id)``);
- ``eventbus:coaches:list`` — the coach list (``COACH_LIST_KEY``).

Deleting is idempotent, so the group keeps no processed-events record; a redelivery deletes
again and republishes the same follow-up (same event id, invariant 5). No tables: ``MIGRATIONS = []``.

Example::

    group = build(resources)            # eventbus run cache
    await cache.set(coach_profile_key("coach-7"), profile_json)
"""

from __future__ import annotations

from consumers import ConsumerGroup, HandlerContext, Migration, Patience, Resources, RetryPolicy
from schemas import CacheCoachDataRefreshed, CoachProfileUpdated, CoachRatingUpdated, CoachStatusChanged

__all__ = [
    "COACH_LIST_KEY",
    "COACH_PROFILE_KEY",
    "GROUP_NAME",
    "MIGRATIONS",
    "OUTAGE_BOUND_S",
    "build",
    "coach_keys",
    "coach_profile_key",
]

GROUP_NAME = "cache"

COACH_PROFILE_KEY = "eventbus:coach:{coach_id}:profile"
"""Template of a coach's cached profile key (see ``coach_profile_key``)."""

COACH_LIST_KEY = "eventbus:coaches:list"
"""The cached coach list."""

_CoachEvent = CoachProfileUpdated | CoachRatingUpdated | CoachStatusChanged

MIGRATIONS: list[Migration] = []
"""The group has no tables."""

OUTAGE_BOUND_S = 30.0
"""How long invalidations wait for an unreachable cache before they are dead-lettered."""


def coach_profile_key(coach_id: str) -> str:
    """The cache key of a coach's profile. Example: ``coach_profile_key("c-7") == "eventbus:coach:c-7:profile"``"""
    return COACH_PROFILE_KEY.format(coach_id=coach_id)


def coach_keys(coach_id: str) -> list[str]:
    """The keys a change of ``coach_id`` invalidates. Example: ``coach_keys("coach-7")[1] == COACH_LIST_KEY``"""
    return [coach_profile_key(coach_id), COACH_LIST_KEY]


def build(resources: Resources, *, retry: RetryPolicy | None = None) -> ConsumerGroup:
    """The ``cache`` group over ``resources.cache``. Example: ``registry.add(build(resources))``

    While the cache is unreachable an invalidation waits and retries (backoff, one warning every
    few seconds) for up to ``retry.bound_s`` (default ``OUTAGE_BOUND_S``) counted from the start of
    the outage; past it, each invalidation fails with ``RetryBoundExceededError`` (the reason in
    its dead letter: the cache, how long it had been failing, the last error) after one try.
    """
    group = ConsumerGroup(GROUP_NAME)
    cache = resources.cache
    patience = Patience("cache", retry or RetryPolicy(bound_s=OUTAGE_BOUND_S), context={"group": GROUP_NAME})

    @group.handler(CoachProfileUpdated, CoachRatingUpdated, CoachStatusChanged)
    async def invalidate(event: _CoachEvent, ctx: HandlerContext) -> None:
        keys = coach_keys(event.coach_id)
        await patience.call(lambda: cache.delete(*keys), what=f"invalidating coach {event.coach_id!r}")
        await ctx.publish(CacheCoachDataRefreshed(coach_id=event.coach_id, invalidated_keys=keys))

    return group
