"""eventbus producers."""

__all__: list[str] = []
