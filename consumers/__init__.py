"""eventbus consumers."""

__all__: list[str] = []
