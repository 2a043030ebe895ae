"""``infra/compose.yaml`` for real: its three Kafka services started with podman-compose on the locally built
image, then ``eventbus topics apply`` and the main job (``eventbus demo``) against the three brokers.

Needs a container engine and podman-compose (``infra/dev/services.sh`` installs both); in CI it must run.
The compose file publishes host ports 19092, 29092 and 39092 by default; when one is taken (a broker of another
test may hold it: they take ports the system hands out), the test gives the file free ones through
``EVENTBUS_KAFKA_<n>_PORT``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra._broker_probe import metadata_broker_ids, port_in_use
from infra._kafka_image import kafka_image
from tests.conftest import IN_CI
from tests.containers import ENGINE_HINT, engine_answers

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "infra" / "compose.yaml"
DEFAULT_PORTS = (19092, 29092, 39092)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI runs the compose test, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def compose_kafka() -> Iterator[str]:
    """The compose file's three Kafka services, up for the module; their bootstrap servers."""
    if not engine_answers():
        _unavailable(ENGINE_HINT)
    compose = shutil.which("podman-compose")
    if compose is None:
        _unavailable("podman-compose is not installed: run `bash infra/dev/services.sh`")
    assert compose is not None
    ports = DEFAULT_PORTS
    if any(port_in_use("127.0.0.1", port) for port in ports):
        ports = (_free_port(), _free_port(), _free_port())
    project = f"eventbus-test-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "EVENTBUS_KAFKA_IMAGE": kafka_image()}
    env |= {f"EVENTBUS_KAFKA_{n}_PORT": str(port) for n, port in enumerate(ports, start=1)}
    base = [compose, "-p", project, "-f", str(COMPOSE)]
    up = subprocess.run(
        [*base, "up", "-d", "kafka-1", "kafka-2", "kafka-3"], env=env, capture_output=True, text=True, check=False
    )
    try:
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        deadline = time.monotonic() + 180
        while any(metadata_broker_ids("127.0.0.1", port, timeout=2) != [1, 2, 3] for port in ports):
            assert time.monotonic() < deadline, "the compose brokers did not form a cluster within 180 s"
            time.sleep(0.5)
        yield ",".join(f"127.0.0.1:{port}" for port in ports)
    finally:
        subprocess.run([*base, "down", "-v"], env=env, capture_output=True, check=False, timeout=300)


def _eventbus(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from infra._cli import main; main()", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.timeout(600)
def test_topics_apply_and_the_main_job_run_on_the_compose_brokers(compose_kafka: str, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVENTBUS_")} | {
        "EVENTBUS_BOOTSTRAP_SERVERS": compose_kafka,
        "EVENTBUS_PROFILE": "kafka",
        "EVENTBUS_TOPIC_PREFIX": f"c{uuid.uuid4().hex[:6]}.",
        "EVENTBUS_DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite'}",
    }
    applied = _eventbus("topics", "apply", env=env, timeout=120)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "0 drifted" in applied.stdout
    again = _eventbus("topics", "apply", env=env, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert " 0 created" in again.stdout or again.stdout.count("existing") >= 1
    demo = _eventbus("demo", "--duration", "15", "--no-live", env=env, timeout=400)
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
