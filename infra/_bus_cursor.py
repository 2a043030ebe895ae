"""Resume tokens of the bus's streams: where a reader is in every partition, as one opaque string.

A cursor is the offset of the next record to read in each partition of the entity topics. It is
sent as the Server-Sent Events ``id`` of each event, so a browser that reconnects with
``Last-Event-ID`` resumes right after the last event it got, in every partition at once.
Format: ``v1.`` + URL-safe base64 (no padding) of zlib-compressed JSON ``[[topic, partition, offset], ...]``.

Example: ``decode_cursor(encode_cursor({("session", 0): 42})) == {("session", 0): 42}``
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Mapping

from schemas.errors import EventBusError

__all__ = ["CursorExpiredError", "InvalidCursorError", "SlowConsumerError", "decode_cursor", "encode_cursor"]

_VERSION = "v1."
_MAX_TOKEN = 8192


class InvalidCursorError(EventBusError):
    """A resume token that is not one of ours (malformed, truncated or from another version)."""


class CursorExpiredError(EventBusError):
    """A resume token pointing at records the topics no longer hold (retention removed them)."""


class SlowConsumerError(EventBusError):
    """A stream's reader fell more than its queue behind; the stream is closed so it never slows the others."""


def encode_cursor(positions: Mapping[tuple[str, int], int]) -> str:
    """The token of ``positions`` (topic, partition) -> next offset."""
    entries = sorted([topic, partition, offset] for (topic, partition), offset in positions.items())
    packed = zlib.compress(json.dumps(entries, separators=(",", ":")).encode(), 9)
    return _VERSION + base64.urlsafe_b64encode(packed).rstrip(b"=").decode("ascii")


def decode_cursor(token: str) -> dict[tuple[str, int], int]:
    """The positions of a token; ``InvalidCursorError`` when it is not a valid one."""
    if not token.startswith(_VERSION) or len(token) > _MAX_TOKEN:
        raise InvalidCursorError(f"not a resume token of this version: {token[:40]!r}")
    body = token[len(_VERSION) :]
    try:
        packed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        entries = json.loads(zlib.decompress(packed))
    except (binascii.Error, ValueError, zlib.error) as exc:
        raise InvalidCursorError(f"malformed resume token: {exc}") from exc
    positions: dict[tuple[str, int], int] = {}
    if not isinstance(entries, list):
        raise InvalidCursorError("malformed resume token: not a list")
    for entry in entries:
        if (
            not isinstance(entry, list)
            or len(entry) != 3  # topic, partition, offset
            or not isinstance(entry[0], str)
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in entry[1:])
        ):
            raise InvalidCursorError(f"malformed resume token entry: {entry!r}")
        positions[(entry[0], entry[1])] = entry[2]
    return positions
