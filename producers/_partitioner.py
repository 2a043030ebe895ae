"""Kafka's default partitioning (the Java client's murmur2), fast enough for the publish hot path."""

from __future__ import annotations

import struct

__all__ = ["KeyPartitioner", "murmur2", "murmur2_partition"]

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of ``data`` (seed 0x9747b28c), as the Java client computes it."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    words = length >> 2
    for word in struct.unpack_from(f"<{words}I", data):
        k = (word * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) ^ ((k * _M) & _MASK)) & _MASK
    rest, tail = length & 3, words << 2
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest:
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key``. Example: ``murmur2_partition(b"s-1", 6)``"""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class KeyPartitioner:
    """``murmur2_partition`` with a bounded memo: an entity's events repeat its key."""

    def __init__(self, max_keys: int = 65_536) -> None:
        self._max_keys = max_keys
        self._hashes: dict[bytes, int] = {}

    def partition(self, key: bytes, partitions: int) -> int:
        """The partition of ``key`` among ``partitions``."""
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self._max_keys:
                self._hashes.clear()
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return hashed % partitions
