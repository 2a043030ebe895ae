"""The cache the groups invalidate: Redis, or an in-process dictionary as the embedded default."""

from __future__ import annotations

import time
from typing import Protocol

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.exceptions import RedisError

from schemas.errors import StorageError

__all__ = ["Cache", "MemoryCache", "RedisCache", "open_cache"]

_REFUSED = (redis_errors.AuthenticationError, redis_errors.AuthorizationError, redis_errors.NoPermissionError)
_TRANSIENT = (
    redis_errors.ConnectionError,  # refused, reset, unreachable; BusyLoadingError (a restart) is one too
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,  # a replica during a failover
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
    redis_errors.MasterDownError,
)


def _redis_error(command: str, exc: RedisError) -> StorageError:
    """A ``StorageError`` for a failed command: retriable when Redis may answer later (down, busy, failing over)."""
    transient = isinstance(exc, _TRANSIENT) and not isinstance(exc, _REFUSED)
    return StorageError(f"redis {command} failed: {exc!r}", retriable=transient)


class Cache(Protocol):
    """Bytes by key with optional expiry."""

    async def get(self, key: str) -> bytes | None:
        """The value, or None when missing or expired."""
        ...

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        """Store a value."""

    async def delete(self, *keys: str) -> int:
        """Remove keys; returns how many existed."""
        ...

    async def close(self) -> None:
        """Release connections."""


class MemoryCache:
    """A per-process cache (the embedded default; other processes do not see it)."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[bytes, float | None]] = {}

    async def get(self, key: str) -> bytes | None:
        """The value, or None when missing or expired."""
        item = self._items.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and time.monotonic() >= expires:
            del self._items[key]
            return None
        return value

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        """Store a value."""
        self._items[key] = (value, None if ttl_s is None else time.monotonic() + ttl_s)

    async def delete(self, *keys: str) -> int:
        """Remove keys; returns how many existed."""
        return sum(self._items.pop(key, None) is not None for key in keys)

    async def close(self) -> None:
        """Nothing to release."""


class RedisCache:
    """Redis through redis-py's asyncio client. Example: ``RedisCache("redis://127.0.0.1:6379/0")``"""

    def __init__(self, url: str) -> None:
        self._redis: Redis = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def __repr__(self) -> str:
        pool = self._redis.connection_pool.connection_kwargs
        return f"RedisCache(host={pool.get('host')!r}, port={pool.get('port')!r}, db={pool.get('db')!r})"

    async def get(self, key: str) -> bytes | None:
        """The value, or None."""
        try:
            value = await self._redis.get(key)
        except RedisError as exc:
            raise _redis_error("GET", exc) from exc
        return value.encode() if isinstance(value, str) else value

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        """SET with an optional expiry."""
        try:
            await self._redis.set(key, value, px=None if ttl_s is None else int(ttl_s * 1000))
        except RedisError as exc:
            raise _redis_error("SET", exc) from exc

    async def delete(self, *keys: str) -> int:
        """DEL the keys."""
        if not keys:
            return 0
        try:
            return int(await self._redis.delete(*keys))
        except RedisError as exc:
            raise _redis_error("DEL", exc) from exc

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()


def open_cache(url: str | None) -> Cache:
    """Redis for a ``redis://`` URL, the in-process cache for None."""
    return MemoryCache() if not url else RedisCache(url)
