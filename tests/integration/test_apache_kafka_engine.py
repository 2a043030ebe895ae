"""The embedded Apache Kafka engine: ``eventbus broker --engine kafka`` and what a missing Java or Maven says.

Real JVMs on 127.0.0.1; the jars come from the Maven cache (resolved once per machine).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra._broker_probe import free_port, metadata_broker_ids, port_in_use
from infra._kafka_cluster import KafkaCluster, new_cluster_id
from infra._kafka_jars import find_java, kafka_jars
from schemas import ConfigurationError

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

CLI = [sys.executable, "-c", "from infra._cli import main; main()", "broker", "--engine", "kafka"]


def _start_cli(*args: str) -> tuple[subprocess.Popen[str], str]:
    """Run the broker command until it prints ``bootstrap=``; return it and the bootstrap servers."""
    process = subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until the broker is ready (or the command failed)
    if not line.startswith("bootstrap="):
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"no bootstrap line: {line!r} {err}")
    return process, line.strip().removeprefix("bootstrap=")


def _stop_cli(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(90)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


async def _round_trip(bootstrap: str, topic: str, value: bytes, *, create: bool, replication: int = 1) -> list[bytes]:
    if create:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 1, replication)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            await producer.send_and_wait(topic, value)
        finally:
            await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        batch = await consumer.getmany(tp, timeout_ms=10_000)
        return [record.value for record in batch.get(tp, [])]
    finally:
        await consumer.stop()


def test_cluster_ids_are_valid_kraft_ids() -> None:
    for _ in range(200):
        cluster_id = new_cluster_id()
        assert len(cluster_id) == 22
        assert not cluster_id.startswith("-")
        assert set(cluster_id) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_the_broker_command_keeps_data_across_restarts_with_a_data_dir(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    data = tmp_path / "kafka"
    process, bootstrap = _start_cli("--port", str(port), "--data-dir", str(data))
    try:
        assert bootstrap == f"127.0.0.1:{port}"
        assert asyncio.run(_round_trip(bootstrap, "kept", b"still here", create=True)) == [b"still here"]
    finally:
        assert _stop_cli(process) == 0
    assert not port_in_use("127.0.0.1", port), "a node outlived the command"
    process, bootstrap = _start_cli("--port", str(port), "--data-dir", str(data))
    try:
        assert asyncio.run(_round_trip(bootstrap, "kept", b"", create=False)) == [b"still here"]
    finally:
        assert _stop_cli(process) == 0


@pytest.mark.timeout(300)
def test_three_nodes_from_the_command_line_and_sigterm_stops_every_node() -> None:
    port = free_port("127.0.0.1")
    while any(port_in_use("127.0.0.1", port + n) for n in range(3)):
        port = free_port("127.0.0.1")
    process, bootstrap = _start_cli("--nodes", "3", "--port", str(port))
    try:
        assert bootstrap == ",".join(f"127.0.0.1:{port + n}" for n in range(3))
        for n in range(3):
            assert metadata_broker_ids("127.0.0.1", port + n, timeout=5) == [1, 2, 3]
        values = asyncio.run(_round_trip(bootstrap, "replicated", b"three copies", create=True, replication=3))
        assert values == [b"three copies"]
    finally:
        assert _stop_cli(process) == 0
    deadline = time.monotonic() + 30
    while any(port_in_use("127.0.0.1", port + n) for n in range(3)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(port_in_use("127.0.0.1", port + n) for n in range(3)), "a node outlived the command"


def test_a_missing_java_is_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path), "JAVA_HOME": str(tmp_path / "nowhere")}
    argv = [*CLI, "--port", str(free_port("127.0.0.1"))]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Java" in lines[0]
    assert "openjdk-17-jre-headless" in lines[0]
    assert "Traceback" not in done.stderr


def test_a_missing_maven_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    java = find_java()
    monkeypatch.setenv("EVENTBUS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(java.resolve().parent))
    monkeypatch.delenv("EVENTBUS_KAFKA_JARS", raising=False)
    with pytest.raises(ConfigurationError, match=r"needs Maven, which was not found: install Maven"):
        kafka_jars()


def test_a_node_that_cannot_start_names_its_log(tmp_path: Path) -> None:
    cluster = KafkaCluster(nodes=1, data_dir=tmp_path / "kafka", properties={"num.network.threads": "not-a-number"})
    with pytest.raises(ConfigurationError, match=r"Kafka node 1 (exited early|failed)"):
        cluster.start(timeout=120)
    assert not cluster.running
