"""Apache Kafka in a container through testcontainers, on podman's Docker-compatible API (or a Docker engine).

Not collected by pytest. ``tests/conftest.py`` builds the ``kafka_container`` fixture on ``start_kafka``.

Where no engine answers, the caller skips locally with ``ENGINE_HINT`` and fails in CI (``CI=true``): an
Apache Kafka variant must run there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from infra._broker_probe import free_port, metadata_broker_ids
from infra._kafka_cluster import new_cluster_id
from infra._kafka_image import kafka_image

PODMAN_SOCKET: Final = Path("/run/podman/podman.sock")

ENGINE_HINT: Final = (
    "no container engine answers: run `bash infra/dev/services.sh` (installs podman and serves its Docker API on "
    f"{PODMAN_SOCKET}) or set DOCKER_HOST to a Docker engine"
)


def use_podman_if_present() -> None:
    """Point testcontainers at podman's API socket when it exists and no DOCKER_HOST is set.

    Without the host override and connection mode, testcontainers asks the engine for a HostConfig podman
    does not give; Ryuk (the reaper container) cannot be pulled here, the fixture stops what it starts.
    """
    if "DOCKER_HOST" not in os.environ and PODMAN_SOCKET.exists():
        os.environ["DOCKER_HOST"] = f"unix://{PODMAN_SOCKET}"
    if os.environ.get("DOCKER_HOST", "").endswith("podman.sock"):
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
        os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
        os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")


def engine_answers() -> bool:
    """Whether a Docker-compatible API answers a ping (not just a client on PATH)."""
    use_podman_if_present()
    try:
        import docker  # noqa: PLC0415 - testcontainers' dependency, only needed here

        client = docker.from_env(timeout=10)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure to reach an engine means "no engine"
        return False


def kraft_environment(port: int) -> dict[str, str]:
    """A single combined KRaft node listening on ``port`` inside and advertised as 127.0.0.1:``port`` outside.

    The same port on both sides (bound one to one) lets the advertised address work from the host.
    The variable names follow the official ``apache/kafka`` image, which the local image copies.
    """
    return {
        "CLUSTER_ID": new_cluster_id(),
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": f"PLAINTEXT://0.0.0.0:{port},CONTROLLER://127.0.0.1:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@127.0.0.1:9093",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "10",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS": "10",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_HEAP_OPTS": "-Xms256m -Xmx768m",
    }


@contextmanager
def start_kafka(*, timeout_s: float = 180.0) -> Iterator[str]:
    """Run Apache Kafka in a container for the block; yields its bootstrap servers (``127.0.0.1:PORT``)."""
    from testcontainers.core.container import DockerContainer  # noqa: PLC0415

    use_podman_if_present()
    port = free_port("127.0.0.1")
    container = DockerContainer(kafka_image()).with_bind_ports(port, port)
    for name, value in kraft_environment(port).items():
        container = container.with_env(name, value)
    container.start()
    try:
        deadline = time.monotonic() + timeout_s
        while metadata_broker_ids("127.0.0.1", port, timeout=2.0) != [1]:
            if time.monotonic() > deadline:
                logs = b"".join(container.get_logs()).decode(errors="replace")[-2000:]
                raise AssertionError(f"Apache Kafka in a container was not ready within {timeout_s:g} s: {logs}")
            time.sleep(0.25)
        yield f"127.0.0.1:{port}"
    finally:
        container.stop()
