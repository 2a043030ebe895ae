"""The SSE gateway under load: publish -> browser latency with 1 000 users streaming, then 10 000 idle streams.

``python -m bench.gateway [--clients 1000] [--rate 1000] [--seconds 20] [--idle 10000] [--idle-seconds 30]
[--quick] [--profile-gateway]``

One ``eventbus gateway`` process (a real subprocess, so its RSS and CPU are its own) over an embedded broker.

* **Streams**: ``--clients`` SSE connections (``GET /v1/events?types=session:*``), each with its own ``user``
  token, opened by a client subprocess (raw asyncio streams and a minimal SSE/chunked parser, not an HTTP
  library per client). This process publishes ``--rate`` ``session:created`` events/s with the SDK
  (``EventPublisher.send()``), round robin over the users (event *k* is user *k* mod clients'), paced against
  a monotonic clock. Latency = the wall clock when the client read the frame's bytes - the event's
  *scheduled* publish time (the publisher calls ``send()`` as soon as an event is due, so a late publisher
  shows up as latency: no coordinated omission). One machine, one clock (``time.time()``); the client
  matches frames to events by event id. The first ``--warmup`` seconds of events are not in the
  percentiles. Every event must reach exactly its user: missing, duplicated, or someone else's events
  are errors.
* **Idle**: ``--idle`` connections (other users) held ``--idle-seconds`` with heartbeats only (the gateway
  pings every ``--heartbeat`` s); how many stayed open, the gateway's RSS, ``/healthz`` answer times.

The gateway's RSS (itself and any children) is sampled every 0.5 s; ``VmHWM`` (the kernel's peak) is read
too. CPU seconds of every process (gateway, clients, this publisher, the broker) are reported per phase:
on 2 shared cores they all compete. ``--profile-gateway`` runs the gateway under pyinstrument and writes
``bench/results/profile_gateway.{pyisession,txt}`` and ``profile_gateway_flat.txt`` (slower: its figures
are not the benchmark's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil

from infra._broker_probe import free_port
from infra._gateway_auth import TokenVerifier
from infra._gateway_config import HttpGatewayConfig
from infra._topics import apply_topics
from producers import EventPublisher
from schemas import EventMetadata

from ._common import broker, build_events, console, freeze_workload, print_table, results_dir, settings_for, unique_name
from ._output import bench_broker, write_results

TYPES = "session:*"
HOST = "127.0.0.1"
TARGET_P99_MS = 100.0
TARGET_RSS_MB = 300.0
SAMPLE_S = 0.5
_MB = 1024 * 1024
_FD_MARGIN = 512
"""File descriptors beyond the connections: the gateway's Kafka clients, logs, the interpreter."""
_TOKEN_TTL_S = 3600


# -- the SSE client (a subprocess) ------------------------------------------------------------------------


class _SseParser:
    """HTTP/1.1 chunked body -> complete SSE messages (the bytes between blank lines)."""

    __slots__ = ("body", "buf", "eof", "need")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.body = bytearray()
        self.need = 0
        self.eof = False

    def feed(self, data: bytes) -> list[bytes]:
        """Take bytes off the socket; return the messages they complete."""
        buf, body = self.buf, self.body
        buf += data
        while True:
            if self.need == 0:
                end = buf.find(b"\r\n")
                if end < 0:
                    break
                size = int(bytes(buf[:end]).split(b";", 1)[0], 16)
                del buf[: end + 2]
                if size == 0:
                    self.eof = True
                    break
                self.need = size + 2  # the chunk and its CRLF
            if len(buf) < self.need:
                break
            body += buf[: self.need - 2]
            del buf[: self.need]
            self.need = 0
        messages = []
        while (end := body.find(b"\n\n")) >= 0:
            messages.append(bytes(body[:end]))
            del body[: end + 2]
        return messages


def _json_string(data: bytes, key: bytes) -> bytes | None:
    """The value of ``"key":"value"`` in compact JSON (the gateway's ``model_dump_json``), without parsing it all."""
    start = data.find(key)
    if start < 0:
        return None
    start += len(key)
    return data[start : data.find(b'"', start)]


_EVENT_ID = b'"event_id":"'
_USER_ID = b'"user_id":"'
Receipt = tuple[str, int, float]
"""(event id, the receiving user's index, wall clock when its bytes were read)."""


@dataclass(eq=False)
class _Conn:
    index: int
    user: str
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    parser: _SseParser = field(default_factory=_SseParser)
    events: int = 0
    pings: int = 0
    resets: int = 0
    mismatches: int = 0
    errors: list[str] = field(default_factory=list)
    failed: str | None = None
    closed_early: str | None = None

    async def open(self, port: int, token: str) -> None:
        """Connect, send the request, wait for the stream's first message (the subscription then exists)."""
        self.reader, self.writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        path = f"/v1/events?types={quote(TYPES, safe='')}&access_token={token}"
        request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: text/event-stream\r\n\r\n"
        self.writer.write(request.encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 200 " not in status + b" ":
            body = await asyncio.wait_for(self.reader.read(2000), timeout=5)
            raise ConnectionError(f"{status.decode(errors='replace')}: {body.decode(errors='replace')[:300]}")
        if b"transfer-encoding: chunked" not in head.lower():
            raise ConnectionError(f"not a chunked response: {head.decode(errors='replace')[:300]}")
        while True:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("closed before the stream began")
            messages = self.parser.feed(data)
            if messages:  # the first is "retry: ...\n: connected"
                for message in messages[1:]:
                    self.handle(message, time.time(), None)
                return

    def handle(self, message: bytes, now: float, receipts: list[Receipt] | None) -> None:
        """One SSE message: a ping, an event (checked: it must be this user's), an error or a reset."""
        if message.startswith(b":"):
            self.pings += 1
            return
        kind = data = None
        for line in message.split(b"\n"):
            if line.startswith(b"data: "):
                data = line[6:]
            elif line.startswith(b"event: "):
                kind = line[7:]
        if kind is None or data is None:
            return
        if kind == b"error":
            self.errors.append(data.decode(errors="replace")[:200])
            return
        if kind == b"reset":
            self.resets += 1
            return
        self.events += 1
        if _json_string(data, _USER_ID) != self.user.encode():
            self.mismatches += 1
        event_id = _json_string(data, _EVENT_ID)
        if receipts is not None and event_id is not None:
            receipts.append((event_id.decode(), self.index, now))

    async def pump(self, receipts: list[Receipt] | None) -> None:
        """Read until the gateway closes the stream (or this task is cancelled at the end)."""
        assert self.reader is not None  # noqa: S101 - opened
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    self.closed_early = "EOF"
                    return
                now = time.time()
                for message in self.parser.feed(data):
                    self.handle(message, now, receipts)
                if self.parser.eof:
                    self.closed_early = "end of stream"
                    return
        except OSError as exc:
            self.closed_early = repr(exc)


def _emit(payload: dict[str, Any]) -> None:
    print(json.dumps(payload), flush=True)


async def _stdin_lines() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def client(args: argparse.Namespace) -> None:
    """The client subprocess: open the streams, say ``ready``, answer ``count``, and on ``stop`` write results."""
    secret = os.environ["EVENTBUS_BENCH_GATEWAY_SECRET"]
    verifier = TokenVerifier(HttpGatewayConfig(jwt_secret=secret, dev_tokens=True))
    conns = [_Conn(i, f"{args.user_prefix}{i}") for i in range(args.first, args.first + args.count)]
    room = asyncio.Semaphore(args.concurrency)

    async def open_one(conn: _Conn) -> None:
        token = verifier.issue(conn.user, ["user"], ttl_s=_TOKEN_TTL_S, user_id=conn.user)
        async with room:
            try:
                await asyncio.wait_for(conn.open(args.port, token), timeout=120)
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                conn.failed = repr(exc)[:300]

    commands = await _stdin_lines()
    started = time.monotonic()
    await asyncio.gather(*(open_one(conn) for conn in conns))
    open_s = time.monotonic() - started
    receipts: list[Receipt] | None = [] if args.client == "latency" else None
    opened = [conn for conn in conns if conn.failed is None]
    pumps = [asyncio.create_task(conn.pump(receipts)) for conn in opened]
    failures = [conn.failed for conn in conns if conn.failed is not None]
    _emit({"ready": len(opened), "failed": len(failures), "open_s": round(open_s, 3), "failures": failures[:3]})
    while True:
        line = (await commands.readline()).strip()
        if line == b"count":
            _emit({"count": sum(conn.events for conn in opened)})
        else:  # "stop", or the parent went away
            break
    still_open = [conn for conn in opened if conn.closed_early is None]
    for task in pumps:
        task.cancel()
    await asyncio.gather(*pumps, return_exceptions=True)
    for conn in opened:
        assert conn.writer is not None  # noqa: S101 - opened
        conn.writer.close()
    pings = [conn.pings for conn in still_open] or [0]
    errors = [error for conn in opened for error in conn.errors]
    result = {
        "asked": len(conns),
        "opened": len(opened),
        "failed": len(failures),
        "failures": failures[:5],
        "open_s": open_s,
        "still_open": len(still_open),
        "closed_early": len(opened) - len(still_open),
        "closed_early_reasons": sorted({str(conn.closed_early) for conn in opened if conn.closed_early})[:5],
        "events": sum(conn.events for conn in opened),
        "mismatches": sum(conn.mismatches for conn in opened),
        "resets": sum(conn.resets for conn in opened),
        "error_frames": len(errors),
        "error_samples": errors[:3],
        "pings_min": min(pings),
        "pings_median": statistics.median(pings),
        "receipts": receipts or [],
    }
    await asyncio.to_thread(Path(args.out).write_text, json.dumps(result))
    _emit({"done": True})


# -- the driver: processes, sampling -------------------------------------------------------------------


def raise_fd_limit(needed: int) -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); SystemExit when ``needed`` cannot fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed, 1 << 20)
    if target < needed:
        raise SystemExit(
            f"bench.gateway needs {needed:,} open files per process (RLIMIT_NOFILE), but the hard limit is "
            f"{hard:,}: raise it (ulimit -Hn, LimitNOFILE=, docker --ulimit nofile=) or pass a smaller --idle"
        )
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def _rss(process: psutil.Process) -> int:
    """RSS of a process and its children (bytes); 0 once it is gone."""
    try:
        total = int(process.memory_info().rss)
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += int(child.memory_info().rss)
    except psutil.Error:
        return 0
    return total


def _vm_hwm_mb(pid: int) -> float | None:
    """The kernel's peak RSS of ``pid`` (``VmHWM``), in MB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def _cpu_s(process: psutil.Process, *, children: bool) -> float:
    """User + system CPU seconds of a process (and its children); NaN once it is gone."""
    try:
        times = process.cpu_times()
        total = float(times.user + times.system)
        for child in process.children(recursive=True) if children else ():
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                total += float(child_times.user + child_times.system)
    except psutil.Error:
        return float("nan")
    return total


def _machine_busy() -> tuple[float, float]:
    """(busy CPU seconds of all cores, total CPU seconds) since boot."""
    times = psutil.cpu_times()
    total = float(sum(times))
    idle = float(times.idle + getattr(times, "iowait", 0.0))
    return total - idle, total


class _Sampler:
    """The gateway's RSS every ``SAMPLE_S``: the peak per phase and the latest value."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self.last = 0

    def sample(self) -> int:
        self.last = _rss(self.process)
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), self.last)
        return self.last

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_S)

    def peak_mb(self, phase: str) -> float:
        return self.peaks.get(phase, 0) / _MB


@dataclass
class _CpuClock:
    """CPU seconds of named processes and of the machine between ``start()`` and ``stop()``."""

    processes: dict[str, psutil.Process]
    started: dict[str, float] = field(default_factory=dict)
    wall0: float = 0.0
    machine0: tuple[float, float] = (0.0, 0.0)

    def start(self) -> None:
        self.started = {name: _cpu_s(p, children=name == "gateway") for name, p in self.processes.items()}
        self.wall0 = time.monotonic()
        self.machine0 = _machine_busy()

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self.wall0
        busy, total = _machine_busy()
        out: dict[str, Any] = {"wall_s": round(wall, 2), "processes": {}}
        for name, process in self.processes.items():
            used = _cpu_s(process, children=name == "gateway") - self.started.get(name, float("nan"))
            out["processes"][name] = {"cpu_s": round(used, 2), "cores": round(used / wall, 3) if wall > 0 else None}
        spent = total - self.machine0[1]
        out["machine_busy"] = round((busy - self.machine0[0]) / spent, 3) if spent > 0 else None
        ours = sum(p["cpu_s"] for p in out["processes"].values() if not math.isnan(p["cpu_s"]))
        out["others_cpu_s"] = round(max(0.0, busy - self.machine0[0] - ours), 2)  # other work on the shared cores
        out["load_average"] = [round(x, 2) for x in os.getloadavg()]
        return out


class _Client:
    """One client subprocess and its line protocol (JSON lines out, commands in)."""

    def __init__(self, process: asyncio.subprocess.Process, out: Path) -> None:
        self.process = process
        self.out = out
        self.ready: dict[str, Any] = {}

    @classmethod
    async def spawn(
        cls, mode: str, port: int, first: int, count: int, *, prefix: str, out: Path, secret: str
    ) -> _Client:
        argv = ["-m", "bench.gateway", "--client", mode, "--port", str(port), "--first", str(first)]
        argv += ["--count", str(count), "--user-prefix", prefix, "--out", str(out)]
        env = {**os.environ, "EVENTBUS_BENCH_GATEWAY_SECRET": secret}
        process = await asyncio.create_subprocess_exec(
            sys.executable, *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env
        )
        return cls(process, out)

    async def read(self, wait_s: float) -> dict[str, Any]:
        assert self.process.stdout is not None  # noqa: S101 - PIPE
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout=wait_s)
        if not line:
            raise RuntimeError(f"the client process exited ({await self.process.wait()})")
        data: dict[str, Any] = json.loads(line)
        return data

    async def command(self, command: str, wait_s: float = 30.0) -> dict[str, Any]:
        assert self.process.stdin is not None  # noqa: S101 - PIPE
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()
        return await self.read(wait_s)

    async def finish(self, wait_s: float = 120.0) -> dict[str, Any]:
        """``stop``: the client closes its streams and writes its results file."""
        await self.command("stop", wait_s)
        await asyncio.wait_for(self.process.wait(), timeout=30)
        data: dict[str, Any] = json.loads(await asyncio.to_thread(self.out.read_text))
        return data

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def _spawn_clients(
    mode: str, port: int, total: int, procs: int, *, prefix: str, folder: Path, secret: str
) -> list[_Client]:
    """``procs`` client processes sharing ``total`` users; returns once each has opened its streams."""
    per = math.ceil(total / procs)
    clients = []
    for i in range(procs):
        first, count = i * per, min(per, total - i * per)
        if count > 0:
            out = folder / f"{mode}-{i}.json"
            clients.append(await _Client.spawn(mode, port, first, count, prefix=prefix, out=out, secret=secret))
    timeout = 120 + total / 20  # opening 10 000 streams on a busy gateway takes a while
    for c in clients:
        c.ready = await c.read(timeout)
    return clients


def _merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The client processes' results as one."""
    summed = ("asked", "opened", "failed", "still_open", "closed_early", "events", "mismatches", "resets")
    merged: dict[str, Any] = {name: sum(int(r[name]) for r in results) for name in summed}
    merged["error_frames"] = sum(int(r["error_frames"]) for r in results)
    merged["open_s"] = max(float(r["open_s"]) for r in results)
    merged["pings_min"] = min(int(r["pings_min"]) for r in results)
    merged["pings_median"] = statistics.median(float(r["pings_median"]) for r in results)
    for name in ("failures", "closed_early_reasons", "error_samples"):
        merged[name] = [item for r in results for item in r[name]][:5]
    return merged


class _Gateway:
    """``eventbus gateway`` as a subprocess, logs (warnings and up) to a file."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    @classmethod
    async def start(cls, env: dict[str, str], log: Path, *, profile_to: Path | None) -> _Gateway:
        script = Path(sys.executable).parent / "eventbus"
        if not script.exists():
            raise SystemExit(f"{script} not found: install the project in this virtualenv (pip install -e .)")
        port = free_port(HOST)
        argv = [str(script), "gateway", "--host", HOST, "--port", str(port), "--log-level", "WARNING"]
        if profile_to is not None:
            argv = [sys.executable, "-m", "pyinstrument", "-r", "pyisession", "-o", str(profile_to), *argv]
        with log.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(*argv, stdout=sink, stderr=sink, env=env)
        gateway = cls(process, port, log)
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                status, _ = await http_get(port, "/readyz")
                if status == 200:
                    return gateway
            if process.returncode is not None or time.monotonic() > deadline:
                tail = (await asyncio.to_thread(log.read_text, errors="replace"))[-2000:]
                await gateway.stop()
                raise RuntimeError(f"the gateway did not become ready; its log ends with:\n{tail}")
            await asyncio.sleep(0.2)

    async def stop(self) -> int | None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=60)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        return self.process.returncode

    def log_summary(self) -> dict[str, int]:
        """How many log records of each message (warnings and errors: the gateway logs nothing else here)."""
        counts: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in self.log.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                    key = f"{record.get('level', '?')}: {str(record.get('message', ''))[:80]}"
                except ValueError:
                    key = line[:80]
                counts[key] = counts.get(key, 0) + 1
        return counts


async def http_get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    """One ``GET`` on a new connection (``Connection: close``): status and body (de-chunked)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{auth}Connection: close\r\n\r\n".encode())
        response = await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        parser = _SseParser()
        parser.feed(body)
        body = bytes(parser.body)
    return int(head.split(b" ", 2)[1]), body


async def _subscriptions(port: int, admin: str) -> int | None:
    """The gateway bus's live subscriptions (``/v1/stats``, admin)."""
    try:
        status, body = await http_get(port, "/v1/stats", admin)
        return int(json.loads(body)["subscriptionCount"]) if status == 200 else None
    except (OSError, TimeoutError, ValueError, IndexError, KeyError):
        return None


async def _wait_subscriptions(port: int, admin: str, expected: int, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while True:
        found = await _subscriptions(port, admin)
        if found == expected or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.5)


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# -- the phases ---------------------------------------------------------------------------------------------


@dataclass
class _Run:
    args: argparse.Namespace
    gateway: _Gateway
    sampler: _Sampler
    settings: Any
    folder: Path
    secret: str
    admin: str
    processes: dict[str, psutil.Process]


async def _publish(run: _Run, clients: int) -> dict[str, Any]:
    """Publish ``rate`` events/s for ``seconds``: event k to user k mod clients. Returns the schedule and pacing."""
    args = run.args
    count = int(args.rate * args.seconds)
    templates = build_events(min(count, 2000), seed=11)
    freeze_workload()
    config = run.settings.publisher_config(service="bench-gateway")
    sent: dict[str, tuple[int, float]] = {}  # event id -> (user index, scheduled wall time)
    late = 0.0
    async with EventPublisher(connection=run.settings.connection(), config=config) as publisher:
        t0, wall0 = time.monotonic(), time.time()
        k = 0
        while k < count:
            due = min(count, int((time.monotonic() - t0) * args.rate) + 1)
            late = max(late, time.monotonic() - (t0 + (due - 1) / args.rate))
            while k < due:
                scheduled = wall0 + k / args.rate
                meta = EventMetadata(
                    event_id=uuid.uuid4(),
                    event_type="session:created",
                    occurred_at=datetime.fromtimestamp(scheduled, UTC),
                )
                user = k % clients
                event = templates[k % len(templates)].model_copy(
                    update={"metadata": meta, "user_id": f"{args.user_prefix}{user}"}
                )
                sent[str(meta.event_id)] = (user, scheduled)
                await publisher.send(event)
                k += 1
            delay = t0 + k / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        achieved = count / (time.monotonic() - t0)
        await publisher.flush()
    return {"sent": sent, "wall0": wall0, "achieved": achieved, "late_max_ms": late * 1000}


def _deliveries(sent: dict[str, tuple[int, float]], receipts: list[Receipt], warmup_until: float) -> dict[str, Any]:
    """Join what the clients got with what was published: latencies, and every mismatch counted."""
    seen: set[tuple[str, int]] = set()
    latencies: list[float] = []
    duplicates = wrong_user = unknown = 0
    for event_id, user, received in receipts:
        expected = sent.get(event_id)
        if expected is None:
            unknown += 1
            continue
        if expected[0] != user:
            wrong_user += 1
            continue
        if (event_id, user) in seen:
            duplicates += 1
            continue
        seen.add((event_id, user))
        if expected[1] >= warmup_until:
            latencies.append((received - expected[1]) * 1000)
    latencies.sort()
    missing = len(sent) - len(seen)
    return {
        "expected": len(sent),
        "delivered": len(seen),
        "missing": missing,
        "duplicates": duplicates,
        "wrong_user": wrong_user,
        "unknown": unknown,
        "errors": missing + duplicates + wrong_user + unknown,
        "measured": len(latencies),
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p90_ms": round(percentile(latencies, 0.90), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "p999_ms": round(percentile(latencies, 0.999), 2),
        "max_ms": round(latencies[-1], 2) if latencies else float("nan"),
    }


async def _streams_phase(run: _Run) -> dict[str, Any]:
    args = run.args
    port = run.gateway.port
    run.sampler.phase = "streams"
    clients = await _spawn_clients(
        "latency", port, args.clients, args.client_procs, prefix=args.user_prefix, folder=run.folder, secret=run.secret
    )
    try:
        opened = sum(int(c.ready["ready"]) for c in clients)
        console.print(
            f"  streams: {opened:,}/{args.clients:,} open in {max(float(c.ready['open_s']) for c in clients):.1f} s;"
            f" gateway RSS {run.sampler.sample() / _MB:.0f} MB"
        )
        subscriptions = await _subscriptions(port, run.admin)
        rss_connected = run.sampler.sample() / _MB
        cpu = _CpuClock(
            {**run.processes, **{f"client {i}": psutil.Process(c.process.pid) for i, c in enumerate(clients)}}
        )
        cpu.start()
        published = await _publish(run, args.clients)
        expected = len(published["sent"])
        deadline = time.monotonic() + args.drain_s
        received = 0
        while time.monotonic() < deadline:  # until every event arrived (or the drain time ran out)
            received = sum([int((await c.command("count"))["count"]) for c in clients])
            if received >= expected:
                break
            await asyncio.sleep(0.2)
        usage = cpu.stop()
        results = [await c.finish() for c in clients]
    finally:
        for c in clients:
            await c.kill()
    merged = _merge(results)
    receipts: list[Receipt] = [tuple(r) for result in results for r in result["receipts"]]  # type: ignore[misc]
    delivered = _deliveries(published["sent"], receipts, published["wall0"] + args.warmup)
    left = await _wait_subscriptions(port, run.admin, 0, 30)
    return {
        "clients": args.clients,
        "rate": args.rate,
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "achieved_rate": round(published["achieved"], 1),
        "publisher_late_max_ms": round(published["late_max_ms"], 2),
        "connections": {k: v for k, v in merged.items() if k != "receipts"},
        "subscriptions_while_open": subscriptions,
        "subscriptions_after_close": left,
        "deliveries": delivered,
        "rss_mb": {
            "connected": round(rss_connected, 1),
            "peak_sampled": round(run.sampler.peak_mb("streams"), 1),
            "vm_hwm": _vm_hwm_mb(run.gateway.process.pid),
        },
        "cpu": usage,
    }


async def _idle_phase(run: _Run) -> dict[str, Any]:
    args = run.args
    port = run.gateway.port
    run.sampler.phase = "idle"
    cpu_open = _CpuClock(dict(run.processes))
    cpu_open.start()
    clients = await _spawn_clients(
        "idle", port, args.idle, args.client_procs, prefix="idle-user-", folder=run.folder, secret=run.secret
    )
    try:
        opening = cpu_open.stop()
        opened = sum(int(c.ready["ready"]) for c in clients)
        console.print(f"  idle: {opened:,}/{args.idle:,} open; gateway RSS {run.sampler.sample() / _MB:.0f} MB")
        cpu = _CpuClock(
            {**run.processes, **{f"client {i}": psutil.Process(c.process.pid) for i, c in enumerate(clients)}}
        )
        cpu.start()
        health: list[float] = []
        health_failures = 0
        deadline = time.monotonic() + args.idle_seconds
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                status, _ = await http_get(port, "/healthz")
                if status == 200:
                    health.append((time.monotonic() - started) * 1000)
                else:
                    health_failures += 1
            except (OSError, TimeoutError, ValueError, IndexError):
                health_failures += 1
            await asyncio.sleep(max(0.0, 0.5 - (time.monotonic() - started)))
        subscriptions = await _subscriptions(port, run.admin)
        rss_held = run.sampler.sample() / _MB
        usage = cpu.stop()
        results = [await c.finish() for c in clients]
    finally:
        for c in clients:
            await c.kill()
    merged = _merge(results)
    left = await _wait_subscriptions(port, run.admin, 0, 60)
    health.sort()
    return {
        "asked": args.idle,
        "seconds": args.idle_seconds,
        "heartbeat_s": args.heartbeat,
        "connections": merged,
        "subscriptions_while_held": subscriptions,
        "subscriptions_after_close": left,
        "rss_mb": {
            "held": round(rss_held, 1),
            "peak_sampled": round(run.sampler.peak_mb("idle"), 1),
            "vm_hwm": _vm_hwm_mb(run.gateway.process.pid),
        },
        "healthz_ms": {
            "probes": len(health),
            "failures": health_failures,
            "p50": round(percentile(health, 0.5), 2),
            "max": round(health[-1], 2) if health else float("nan"),
        },
        "cpu_opening": opening,
        "cpu_held": usage,
    }


def _gateway_env(bootstrap: str, prefix: str, secret: str, heartbeat_s: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBUS_HTTP_")}
    env |= {
        "EVENTBUS_BOOTSTRAP_SERVERS": bootstrap,
        "EVENTBUS_PROFILE": "kafka" if bench_broker() == "kafka" else "embedded",
        "EVENTBUS_TOPIC_PREFIX": prefix,
        "EVENTBUS_HTTP_JWT_SECRET": secret,
        "EVENTBUS_HTTP_HEARTBEAT_S": str(heartbeat_s),
    }
    if bench_broker() == "kafka":
        env["EVENTBUS_REPLICATION_FACTOR"] = "1"
    return env


def _broker_process() -> psutil.Process | None:
    """The embedded broker this process started (Tansu, or Kafka's JVM), if any."""
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "tansu" in child.name() or "java" in child.name():
                return child
    return None


async def run(**options: Any) -> dict[str, Any]:
    """Both phases against one gateway process (``options``: the command line's, by their Python names, e.g.
    ``seconds=10, idle=2000``); writes ``bench/results/gateway.json``. What ``bench.all`` calls."""
    args = parser().parse_args([])
    for name, value in options.items():
        if not hasattr(args, name):
            raise TypeError(f"bench.gateway.run: unknown option {name!r}")
        setattr(args, name, value)
    return await _run(args)


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    limit = raise_fd_limit(max(args.idle, args.clients) + _FD_MARGIN)
    secret = secrets.token_urlsafe(48)
    admin = TokenVerifier(HttpGatewayConfig(jwt_secret=secret, dev_tokens=True)).issue("bench-admin", ["admin"])
    payload: dict[str, Any] = {"arguments": {k: v for k, v in vars(args).items() if k not in ("client", "out")}}
    payload["fd_limit"] = limit
    with broker() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prefix = unique_name("gw")
        settings = settings_for(bootstrap, prefix)
        await apply_topics(settings.connection(), replication_factor=settings.replication)
        profile_to = results_dir() / "profile_gateway.pyisession" if args.profile_gateway else None
        if profile_to is not None:
            profile_to.parent.mkdir(parents=True, exist_ok=True)
        env = _gateway_env(bootstrap, prefix, secret, args.heartbeat)
        gateway = await _Gateway.start(env, folder / "gateway.log", profile_to=profile_to)
        sampler = _Sampler(gateway.process.pid)
        sampling = asyncio.create_task(sampler.run())
        processes = {"gateway": psutil.Process(gateway.process.pid), "publisher (this process)": psutil.Process()}
        if (found := _broker_process()) is not None:
            processes["broker"] = found
        await asyncio.sleep(1.0)
        payload["gateway_rss_baseline_mb"] = round(sampler.sample() / _MB, 1)
        state = _Run(args, gateway, sampler, settings, folder, secret, admin, processes)
        try:
            if args.clients > 0:
                console.print(f"streams: {args.clients:,} clients, {args.rate:,} events/s for {args.seconds:g} s")
                payload["streams"] = await _streams_phase(state)
            if args.idle > 0:
                console.print(f"idle: {args.idle:,} connections held {args.idle_seconds:g} s")
                payload["idle"] = await _idle_phase(state)
        finally:
            sampling.cancel()
            payload["gateway_exit_code"] = await gateway.stop()
            payload["gateway_log"] = gateway.log_summary()
    if profile_to is not None:
        payload["profile"] = _render_profile(profile_to)
        payload["note"] = "run under pyinstrument: the figures include the profiler's overhead"
    payload["targets"] = targets(payload)
    report(payload)
    write_results("gateway", payload)
    return payload


def _render_profile(session: Path) -> list[str]:
    """The saved pyinstrument session as a call tree (our code) and a flat table of self time (everything)."""
    tree, flat = session.with_suffix(".txt"), session.with_name("profile_gateway_flat.txt")
    render = [sys.executable, "-m", "pyinstrument", "--load", str(session), "-r", "text"]
    subprocess.run([*render, "-o", str(tree)], check=True)
    subprocess.run([*render, "-p", "flat=true", "--show-all", "-o", str(flat)], check=True)
    console.print(f"gateway profile: {tree}, {flat} (pyinstrument --load {session} for more views)")
    return [str(session), str(tree), str(flat)]


def targets(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets with the measured values."""
    out = []
    if streams := payload.get("streams"):
        p99 = float(streams["deliveries"]["p99_ms"])
        rss = float(streams["rss_mb"]["peak_sampled"])
        errors = int(streams["deliveries"]["errors"])
        out.append({"target": "p99 publish -> SSE client", "value": p99, "limit": f"<= {TARGET_P99_MS} ms"})
        out[-1]["met"] = p99 <= TARGET_P99_MS
        out.append({"target": "gateway peak RSS (streams)", "value": rss, "limit": f"<= {TARGET_RSS_MB} MB"})
        out[-1]["met"] = rss <= TARGET_RSS_MB
        out.append({"target": "delivery errors", "value": errors, "limit": "== 0", "met": errors == 0})
    if idle := payload.get("idle"):
        held = int(idle["connections"]["still_open"])
        asked = int(idle["asked"])
        out.append({"target": "idle connections held", "value": held, "limit": f">= {asked}", "met": held >= asked})
    return out


def _cpu_rows(usage: dict[str, Any]) -> str:
    parts = [f"{name} {p['cpu_s']:.1f} s ({p['cores']:.0%})" for name, p in usage["processes"].items()]
    busy, others = usage.get("machine_busy"), usage.get("others_cpu_s", 0.0)
    parts.append(f"other work {others:.1f} s ({others / usage['wall_s']:.0%})")
    return "; ".join(parts) + (f"; all cores {busy:.0%} busy" if busy is not None else "")


def report(payload: dict[str, Any]) -> None:
    """Print the tables."""
    rows: list[tuple[str, str, str]] = []
    if streams := payload.get("streams"):
        d, c, r = streams["deliveries"], streams["connections"], streams["rss_mb"]
        rows += [
            ("SSE clients connected", f"{c['opened']:,}/{streams['clients']:,} in {c['open_s']:.1f} s", ""),
            ("events/s asked / achieved", f"{streams['rate']:,} / {streams['achieved_rate']:,.0f}", ""),
            ("delivered / expected", f"{d['delivered']:,}/{d['expected']:,}", ""),
            (
                "errors (missing, duplicate, wrong user, unknown)",
                f"{d['errors']} ({d['missing']}, {d['duplicates']}, {d['wrong_user']}, {d['unknown']})",
                "0",
            ),
            ("streams cut / error frames", f"{c['closed_early']} / {c['error_frames']}", "0"),
            ("latency p50 / p90 ms", f"{d['p50_ms']:.1f} / {d['p90_ms']:.1f}", ""),
            ("latency p99 ms", f"{d['p99_ms']:.1f}", f"<= {TARGET_P99_MS:g}"),
            ("latency p99.9 / max ms", f"{d['p999_ms']:.1f} / {d['max_ms']:.1f}", ""),
            ("publisher late (max ms)", f"{streams['publisher_late_max_ms']:.1f}", ""),
            (
                "gateway RSS: idle start / connected MB",
                f"{payload['gateway_rss_baseline_mb']:.0f} / {r['connected']:.0f}",
                "",
            ),
            (
                "gateway RSS peak MB (sampled; VmHWM)",
                f"{r['peak_sampled']:.0f}; {r['vm_hwm'] or 0:.0f}",
                f"<= {TARGET_RSS_MB:g}",
            ),
            ("CPU during publishing", _cpu_rows(streams["cpu"]), ""),
        ]
    if idle := payload.get("idle"):
        c, r, h = idle["connections"], idle["rss_mb"], idle["healthz_ms"]
        rows += [
            ("idle connections opened", f"{c['opened']:,}/{idle['asked']:,} in {c['open_s']:.1f} s", ""),
            (
                f"idle connections held {idle['seconds']:g} s",
                f"{c['still_open']:,}/{idle['asked']:,}",
                f">= {idle['asked']:,}",
            ),
            (
                f"heartbeats per stream (every {idle['heartbeat_s']:g} s)",
                f"min {c['pings_min']}, median {c['pings_median']:g}",
                "",
            ),
            ("gateway RSS held / peak MB", f"{r['held']:.0f} / {r['peak_sampled']:.0f}", ""),
            (
                "/healthz while held ms (p50 / max)",
                f"{h['p50']:.1f} / {h['max']:.1f} ({h['probes']} probes, {h['failures']} failed)",
                "",
            ),
            ("CPU opening", _cpu_rows(idle["cpu_opening"]), ""),
            ("CPU while held", _cpu_rows(idle["cpu_held"]), ""),
        ]
    print_table("SSE gateway: one process, embedded broker", ["measure", "value", "target"], rows)
    if payload.get("targets"):
        print_table(
            "Targets of the issue",
            ["target", "measured", "limit", "met"],
            [(t["target"], f"{t['value']:,}", t["limit"], "yes" if t["met"] else "NO") for t in payload["targets"]],
        )
    if payload.get("gateway_log"):
        console.print("gateway log (warnings and errors): " + json.dumps(payload["gateway_log"])[:1000])


def parser(*, quick: bool = False) -> argparse.ArgumentParser:
    """The options; ``quick``: the smoke run's defaults (options given explicitly still win)."""
    parser = argparse.ArgumentParser(description="SSE gateway: publish -> client latency, RSS, idle connections")
    parser.add_argument("--clients", type=int, default=1000, help="SSE clients, one user each (default 1000)")
    parser.add_argument("--rate", type=int, default=1000, help="session:created events/s over them (default 1000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of publishing (default 20)")
    parser.add_argument("--warmup", type=float, default=2.0, help="first seconds not in the percentiles (default 2)")
    parser.add_argument("--drain-s", type=float, default=15.0, help="wait at most this for the last events")
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections to hold (default 10000; 0: none)")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="seconds to hold them (default 30)")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="the gateway's ping interval, s (default 5)")
    parser.add_argument("--client-procs", type=int, default=1, help="client processes (default 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 100 clients, 200/s, 5 s; 1 000 idle, 5 s")
    parser.add_argument("--profile-gateway", action="store_true", help="run the gateway under pyinstrument")
    parser.add_argument("--user-prefix", default="bench-user-", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=("latency", "idle"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    if quick:
        parser.set_defaults(clients=100, rate=200, seconds=5.0, warmup=1.0, idle=1000, idle_seconds=5.0, heartbeat=2.0)
    return parser


def main() -> None:
    """Command line entry point (also the client subprocess, with ``--client``)."""
    args = parser(quick="--quick" in sys.argv).parse_args()
    if args.client:
        asyncio.run(client(args))
        return
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
