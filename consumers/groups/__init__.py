"""The marketplace's consumer groups: notifications, credits, cache, analytics and payments.

Each module has ``MIGRATIONS`` (its tables) and ``build(resources) -> ConsumerGroup``.
"""

__all__: list[str] = []
