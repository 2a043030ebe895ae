"""Kafka's default partitioning (the Java client's murmur2), fast enough for the publish hot path.

Hashing a key in pure Python costs about 5 µs, as much as a third of a fire-and-forget publish of an
event whose key is new. Where the confluent-kafka wheel is installed (the ``native`` extra; it ships
librdkafka), librdkafka's own murmur2 partitioner is called through ctypes instead (about 1 µs); it
is checked against the pure-Python one when loaded, which is used whenever it is not there.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import struct
from collections.abc import Callable
from pathlib import Path

__all__ = ["KeyPartitioner", "murmur2", "murmur2_partition", "native_murmur2_partition"]

_NATIVE_ENV = "EVENTBUS_NATIVE_MURMUR2"
"""Set to ``0`` to never load librdkafka's murmur2 (the pure-Python one is used)."""

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


# Keys of every length modulo 4 (murmur2 hashes 4-byte words, then a tail), checked at load.
_CHECKED_KEYS = (b"", b"a", b"21", b"abc", b"foobar", b"a-little-bit-long-string", b"s-" + b"9" * 34)


def _librdkafka_paths() -> list[str]:
    """Where the confluent-kafka wheel keeps its bundled librdkafka (found without importing it).

    A system librdkafka is not looked for: ``ctypes.util.find_library`` runs ``ldconfig`` (or a
    compiler), which an import must not do.
    """
    paths: list[str] = []
    spec = importlib.util.find_spec("confluent_kafka")
    if spec is not None and spec.origin is not None:
        package = Path(spec.origin).parent
        for folder in (package.parent / "confluent_kafka.libs", package / ".dylibs", package):
            paths.extend(str(p) for p in sorted(folder.glob("librdkafka*")) if ".so" in p.name or ".dylib" in p.name)
    return paths


def native_murmur2_partition() -> Callable[[bytes, int], int] | None:
    """librdkafka's ``rd_kafka_msg_partitioner_murmur2`` as ``f(key, partitions)``, or None.

    None when librdkafka is not installed, ``EVENTBUS_NATIVE_MURMUR2=0``, or it disagrees with the
    pure-Python hashes on a few keys. Example: ``(native_murmur2_partition() or murmur2_partition)(b"s-1", 6)``
    """
    if os.environ.get(_NATIVE_ENV, "1") == "0":
        return None
    for path in _librdkafka_paths():
        try:
            function = ctypes.CDLL(path).rd_kafka_msg_partitioner_murmur2
        except (OSError, AttributeError):
            continue
        function.restype = ctypes.c_int32
        # (topic handle, key, key length, partition count, topic opaque, message opaque): only the key and
        # the count are read by this partitioner.
        function.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int32]
        function.argtypes += [ctypes.c_void_p, ctypes.c_void_p]

        def partition(key: bytes, partitions: int, _call: Callable[..., int] = function) -> int:
            return _call(None, key, len(key), partitions, None, None)

        if all(partition(key, n) == murmur2_partition(key, n) for key in _CHECKED_KEYS for n in (1, 3, 7)):
            return partition
    return None


_NATIVE = native_murmur2_partition()


class KeyPartitioner:
    """``murmur2_partition`` (librdkafka's when installed) with a bounded memo: an entity's events repeat its key.

    Example: ``KeyPartitioner().partition(b"s-1", 6)``
    """

    def __init__(self, max_keys: int = 65_536, *, native: bool = True) -> None:
        self._max_keys = max_keys
        self._memos: dict[int, dict[bytes, int]] = {}  # partition count -> key -> partition
        self._native = _NATIVE if native else None

    @property
    def native(self) -> bool:
        """Whether librdkafka's murmur2 is used."""
        return self._native is not None

    def partition(self, key: bytes, partitions: int) -> int:
        """The partition of ``key`` among ``partitions``."""
        memo = self._memos.get(partitions)
        if memo is None:
            memo = self._memos[partitions] = {}
        found = memo.get(key)
        if found is None:
            if len(memo) >= self._max_keys:
                memo.clear()
            native = self._native
            found = native(key, partitions) if native is not None else (murmur2(key) & 0x7FFFFFFF) % partitions
            memo[key] = found
        return found
