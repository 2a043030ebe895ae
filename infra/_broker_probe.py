"""Local ports, and Kafka wire-protocol probes used to tell when a broker process is ready (no client library needed).

``answers_api_versions`` sends ApiVersions v0, which every Kafka-protocol broker answers (Tansu and Apache
Kafka alike). ``metadata_broker_ids`` sends Metadata v4 and returns the ids of the brokers the cluster
reports: an Apache Kafka node answers it only once it has joined the KRaft quorum and registered.

Example: ``metadata_broker_ids("127.0.0.1", 9092, timeout=1.0)  # [1, 2, 3]``
"""

from __future__ import annotations

import socket
import struct

__all__ = ["answers_api_versions", "free_port", "metadata_broker_ids", "port_in_use"]

_API_VERSIONS = 18
_METADATA = 3
_CLIENT_ID = b"eventbus-probe"


def free_port(host: str) -> int:
    """A TCP port nobody listens on right now. Example: ``free_port("127.0.0.1")  # 41023``"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(host: str, port: int) -> bool:
    """Whether a process listens on ``host:port`` (TIME_WAIT leftovers do not count, as brokers bind the same way)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


def _request(api_key: int, version: int, correlation_id: int, body: bytes) -> bytes:
    header = struct.pack(">hhih", api_key, version, correlation_id, len(_CLIENT_ID)) + _CLIENT_ID
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        data += chunk
    return data


def _exchange(host: str, port: int, request: bytes, timeout: float) -> bytes | None:
    """Send one request and read one response; None on any transport failure or absurd size."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            if not 4 <= size <= 1 << 20:
                return None
            return _recv_exact(sock, size)
    except OSError:  # refused, reset, timed out, closed early
        return None


def answers_api_versions(host: str, port: int, timeout: float) -> bool:
    """True when an ApiVersions v0 request gets a well-formed, error-free reply."""
    correlation_id = 0x7E5B0001
    payload = _exchange(host, port, _request(_API_VERSIONS, 0, correlation_id, b""), timeout)
    if payload is None or len(payload) < 10:
        return False
    got_id, error_code, count = struct.unpack_from(">ihi", payload)
    well_formed: bool = got_id == correlation_id and error_code == 0 and count > 0 and len(payload) == 10 + 6 * count
    return well_formed


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, fmt: str) -> tuple[int, ...]:
        values = struct.unpack_from(fmt, self._data, self._at)
        self._at += struct.calcsize(fmt)
        return values

    def skip_string(self) -> None:
        (length,) = self.take(">h")
        self._at += max(0, length)


def metadata_broker_ids(host: str, port: int, timeout: float) -> list[int] | None:
    """The node ids of the brokers in a Metadata v4 reply (no topics asked for); None when none came."""
    correlation_id = 0x7E5B0002
    body = struct.pack(">ib", 0, 0)  # an empty topic list, no auto-creation
    payload = _exchange(host, port, _request(_METADATA, 4, correlation_id, body), timeout)
    if payload is None:
        return None
    try:
        reader = _Reader(payload)
        (got_id, _throttle, count) = reader.take(">iii")
        if got_id != correlation_id:
            return None
        ids: list[int] = []
        for _ in range(count):
            (node_id,) = reader.take(">i")
            reader.skip_string()  # host
            reader.take(">i")  # port
            reader.skip_string()  # rack
            ids.append(node_id)
    except struct.error:
        return None
    return sorted(ids)
