"""Apache Kafka in KRaft mode on 127.0.0.1: one or three combined broker+controller JVMs, from Maven's jars.

Each node is ``kafka.Kafka server.properties`` in a child process with a small heap; its storage is formatted
with ``kafka.tools.StorageTool`` under a valid cluster id first. With ``data_dir`` the cluster keeps its
data (and cluster id) across restarts; without it everything lives in a temporary folder removed at stop.
Three nodes get replication 3 and ``min.insync.replicas=2``.

Example::

    with KafkaCluster(nodes=3) as cluster:
        run_app(bootstrap_servers=cluster.bootstrap_servers)
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self

from schemas.errors import BrokerUnavailableError, ConfigurationError

from ._broker_probe import free_port, metadata_broker_ids, port_in_use
from ._kafka_jars import find_java, kafka_jars

__all__ = ["KafkaCluster", "KafkaListener", "KafkaTls", "new_cluster_id"]

_LOG4J2 = Path(__file__).resolve().parent / "kafka" / "log4j2.yaml"
_SCRAM = "SCRAM-SHA-512"
_SCRAM_UNSAFE = re.compile(r'[\s,\[\]="]')


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes in URL-safe base64 without padding (22 characters).

    Like Kafka's own ``Uuid.randomUuid()``, never one starting with ``-``, which command lines take for an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass(frozen=True, slots=True)
class KafkaListener:
    """A client listener besides PLAINTEXT, on every node (``port`` is the first node's; 0 picks free ports).

    Example: ``KafkaListener("SASL", "SASL_PLAINTEXT")``
    """

    name: str
    protocol: Literal["SSL", "SASL_PLAINTEXT", "SASL_SSL"]
    port: int = 0

    def __post_init__(self) -> None:
        if not self.name.isascii() or not self.name.replace("_", "").isalnum() or not self.name.isupper():
            raise ConfigurationError(f"listener name {self.name!r}: upper-case ASCII letters, digits and _ only")
        if self.name in {"PLAINTEXT", "CONTROLLER"}:
            raise ConfigurationError(f"listener name {self.name!r} is reserved")


@dataclass(frozen=True, slots=True)
class KafkaTls:
    """The brokers' TLS identity: a PEM certificate chain and its unencrypted PEM (PKCS#8) private key.

    Example: ``KafkaTls(certfile=Path("broker.pem"), keyfile=Path("broker.key"))``
    """

    certfile: Path
    keyfile: Path


@dataclass(slots=True)
class _Node:
    node_id: int
    home: Path
    port: int
    controller_port: int
    listener_ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.home / "kafka.out"

    @property
    def data(self) -> Path:
        return self.home / "data"


class KafkaCluster:
    """One or three Apache Kafka nodes (KRaft, combined roles) as child processes; the caller owns them.

    ``port`` is the first node's PLAINTEXT port (the others take the next ones); 0 or None picks free ports.
    ``listeners``, ``tls`` and ``scram_users`` add TLS and SASL/SCRAM-SHA-512 listeners (users created at
    format time). Example: ``KafkaCluster(nodes=1, port=9092, data_dir=Path("kafka-data"))``
    """

    def __init__(
        self,
        *,
        nodes: int = 1,
        host: str = "127.0.0.1",
        port: int | None = None,
        data_dir: Path | str | None = None,
        heap_mb: int = 512,
        listeners: Sequence[KafkaListener] = (),
        tls: KafkaTls | None = None,
        scram_users: Mapping[str, str] | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        if nodes not in (1, 3):
            raise ConfigurationError(f"an embedded Apache Kafka cluster has 1 or 3 nodes, not {nodes}")
        if any(item.protocol.endswith("SSL") for item in listeners) and tls is None:
            raise ConfigurationError("an SSL or SASL_SSL listener needs tls= (the brokers' certificate and key)")
        self._host = host
        self._count = nodes
        self._first_port = port or 0
        self._data_dir = Path(data_dir).expanduser().resolve() if data_dir is not None else None
        self._heap_mb = heap_mb
        self._listeners = tuple(listeners)
        self._tls = tls
        self._scram_users = dict(scram_users or {})
        for name, password in self._scram_users.items():
            # StorageTool reads "SCRAM-SHA-512=[name=...,password=...]": these characters would break it.
            if not name or not password or _SCRAM_UNSAFE.search(name) or _SCRAM_UNSAFE.search(password):
                raise ConfigurationError(
                    f'SCRAM user {name!r}: the name and password must be non-empty, without spaces or any of , [ ] = "'
                )
        self._properties = dict(properties or {})
        self._home: Path | None = None
        self._temporary = False
        self._nodes: list[_Node] = []
        self._cluster_id = ""

    # -- addresses ---------------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """Every node's PLAINTEXT ``host:port``, comma-separated. Example: ``"127.0.0.1:9092,127.0.0.1:9093"``"""
        self._require_started()
        return ",".join(f"{self._host}:{node.port}" for node in self._nodes)

    def listener_bootstrap(self, name: str) -> str:
        """Every node's ``host:port`` on the extra listener ``name``. Example: ``c.listener_bootstrap("SASL")``"""
        self._require_started()
        if name not in {item.name for item in self._listeners}:
            raise ConfigurationError(f"no listener named {name!r}")
        return ",".join(f"{self._host}:{node.listener_ports[name]}" for node in self._nodes)

    @property
    def node_ids(self) -> list[int]:
        """The nodes' ids (1, or 1 2 3). Example: ``for node_id in c.node_ids: ...``"""
        return [node.node_id for node in self._nodes] or list(range(1, self._count + 1))

    @property
    def cluster_id(self) -> str:
        """The KRaft cluster id the storage was formatted with."""
        return self._cluster_id

    def node_address(self, node_id: int) -> str:
        """One node's PLAINTEXT ``host:port``. Example: ``c.node_address(2)``"""
        return f"{self._host}:{self._node(node_id).port}"

    def node_running(self, node_id: int) -> bool:
        """Whether the node's process is alive. Example: ``assert c.node_running(1)``"""
        process = self._node(node_id).process
        return process is not None and process.poll() is None

    def node_pid(self, node_id: int) -> int | None:
        """The node's process id while it runs. Example: ``os.kill(c.node_pid(1), 0)``"""
        process = self._node(node_id).process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        """True while every node's process is alive."""
        return bool(self._nodes) and all(self.node_running(node.node_id) for node in self._nodes)

    # -- lifetime ----------------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> None:
        """Format what is not formatted yet, start every node, and block until all answer Metadata with all nodes.

        Raises ``ConfigurationError`` (Java or Maven missing, a port taken, a node exiting early) and
        ``BrokerUnavailableError`` (not ready within ``timeout`` seconds). Example: ``c.start(timeout=60)``
        """
        if self.running:
            return
        java = find_java()
        classpath = f"{kafka_jars()}/*"
        self._prepare_layout()
        self._format(java, classpath)
        try:
            for node in self._nodes:
                self._launch(node, java, classpath)
            self._wait_ready(self._nodes, timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every node, SIGKILL what is still alive after ``timeout`` seconds; safe to call twice."""
        running = [node.process for node in self._nodes if node.process is not None and node.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for node in self._nodes:
            node.process = None
        if self._temporary and self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None
            self._nodes = []

    def stop_node(self, node_id: int, *, kill: bool = False, timeout: float = 60.0) -> None:
        """Stop one node: SIGKILL with ``kill``, else SIGTERM (a controlled shutdown) then SIGKILL after ``timeout``."""
        node = self._node(node_id)
        process, node.process = node.process, None
        if process is None or process.poll() is not None:
            return
        if kill:
            process.kill()
            process.wait()
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def start_node(self, node_id: int, timeout: float = 180.0) -> None:
        """Start a stopped node again and wait until it answers Metadata with every node registered."""
        node = self._node(node_id)
        if self.node_running(node_id):
            return
        self._launch(node, find_java(), f"{kafka_jars()}/*")
        self._wait_ready([node], timeout)

    def _require_started(self) -> None:
        if not self._nodes:
            raise ConfigurationError("the Apache Kafka cluster has not been started")

    def _node(self, node_id: int) -> _Node:
        self._require_started()
        for node in self._nodes:
            if node.node_id == node_id:
                return node
        raise ConfigurationError(f"no node {node_id} (nodes: {self.node_ids})")

    # -- layout, format, launch --------------------------------------------------------------------

    def _prepare_layout(self) -> None:
        if self._nodes:  # started before: same ports and folders
            return
        if self._data_dir is None:
            self._home = Path(tempfile.mkdtemp(prefix="eventbus-kafka-"))
            self._temporary = True
        else:
            self._home = self._data_dir
            self._home.mkdir(parents=True, exist_ok=True)
        self._cluster_id = self._load_cluster_id(self._home)
        for index in range(self._count):
            port = self._first_port + index if self._first_port else free_port(self._host)
            node = _Node(index + 1, self._home / f"node-{index + 1}", port, free_port(self._host))
            for item in self._listeners:
                node.listener_ports[item.name] = item.port + index if item.port else free_port(self._host)
            node.home.mkdir(parents=True, exist_ok=True)
            self._nodes.append(node)
        for node in self._nodes:
            (node.home / "server.properties").write_text(self._server_properties(node), encoding="utf-8")

    def _load_cluster_id(self, home: Path) -> str:
        marker = home / "cluster.json"
        if marker.is_file():
            saved = json.loads(marker.read_text(encoding="utf-8"))
            if saved.get("nodes") != self._count:
                raise ConfigurationError(
                    f"{home} holds a {saved.get('nodes')}-node cluster; start it with --nodes {saved.get('nodes')}"
                    " or use another data dir"
                )
            return str(saved["cluster_id"])
        cluster_id = new_cluster_id()
        marker.write_text(json.dumps({"cluster_id": cluster_id, "nodes": self._count}) + "\n", encoding="utf-8")
        return cluster_id

    def _server_properties(self, node: _Node) -> str:
        host = self._host
        replicas = min(3, self._count)
        isr = min(2, self._count)
        listeners = [f"PLAINTEXT://{host}:{node.port}", f"CONTROLLER://{host}:{node.controller_port}"]
        advertised = [f"PLAINTEXT://{host}:{node.port}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        for item in self._listeners:
            listeners.append(f"{item.name}://{host}:{node.listener_ports[item.name]}")
            advertised.append(f"{item.name}://{host}:{node.listener_ports[item.name]}")
            protocols.append(f"{item.name}:{item.protocol}")
        voters = ",".join(f"{other.node_id}@{host}:{other.controller_port}" for other in self._nodes)
        values: dict[str, str] = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": ",".join(listeners),
            "advertised.listeners": ",".join(advertised),
            "listener.security.protocol.map": ",".join(protocols),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(node.data),
            "num.partitions": "1",
            "default.replication.factor": str(replicas),
            "min.insync.replicas": str(isr),
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": str(replicas),
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": str(replicas),
            "transaction.state.log.min.isr": str(isr),
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": str(replicas),
            "share.coordinator.state.topic.min.isr": str(isr),
            "group.initial.rebalance.delay.ms": "0",
            "message.max.bytes": "1048588",
        }
        if any(item.protocol.startswith("SASL") for item in self._listeners):
            values["sasl.enabled.mechanisms"] = _SCRAM
            for item in self._listeners:
                if item.protocol.startswith("SASL"):
                    values[f"listener.name.{item.name.lower()}.{_SCRAM.lower()}.sasl.jaas.config"] = (
                        "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                    )
        if self._tls is not None:
            keystore = node.home / "keystore.pem"
            _write_private(
                keystore,
                self._tls.keyfile.read_text(encoding="ascii").rstrip()
                + "\n"
                + self._tls.certfile.read_text(encoding="ascii"),
            )
            values["ssl.keystore.type"] = "PEM"
            values["ssl.keystore.location"] = str(keystore)
        values.update(self._properties)
        return "".join(f"{key}={value}\n" for key, value in values.items())

    def _java_argv(self, java: Path, classpath: str, node: _Node, main: str) -> list[str]:
        heap = f"{self._heap_mb}m"
        return [
            str(java),
            f"-Xms{min(self._heap_mb, 256)}m",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={_LOG4J2}",
            f"-Dkafka.logs.dir={node.home / 'logs'}",
            "-cp",
            classpath,
            main,
        ]

    def _format(self, java: Path, classpath: str) -> None:
        pending: list[tuple[_Node, subprocess.Popen[bytes]]] = []
        for node in self._nodes:
            if (node.data / "meta.properties").is_file():
                continue
            argv = self._java_argv(java, classpath, node, "kafka.tools.StorageTool")
            argv[1:3] = ["-Xms64m", "-Xmx256m"]
            argv += ["format", "-t", self._cluster_id, "-c", str(node.home / "server.properties"), "--ignore-formatted"]
            for name, password in self._scram_users.items():
                argv += ["--add-scram", f"{_SCRAM}=[name={name},password={password}]"]
            with (node.home / "format.out").open("wb") as out:
                pending.append((node, subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)))  # noqa: S603
        for node, process in pending:
            try:
                code = process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            if code != 0:
                tail = _tail(node.home / "format.out")
                raise ConfigurationError(f"formatting the storage of Kafka node {node.node_id} failed ({code}): {tail}")

    def _launch(self, node: _Node, java: Path, classpath: str) -> None:
        for port in (node.port, node.controller_port, *node.listener_ports.values()):
            if port_in_use(self._host, port):
                raise ConfigurationError(f"cannot start Kafka node {node.node_id}: {self._host}:{port} is in use")
        argv = [*self._java_argv(java, classpath, node, "kafka.Kafka"), str(node.home / "server.properties")]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "JAVA_TOOL_OPTIONS"))}
        log: IO[bytes] = node.log_path.open("ab")
        try:
            node.process = subprocess.Popen(  # noqa: S603 - argv built from resolved paths
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        except OSError as exc:
            raise ConfigurationError(f"cannot run {java}: {exc}") from exc
        finally:
            log.close()

    def _wait_ready(self, nodes: Sequence[_Node], timeout: float) -> None:
        expected = sorted(node.node_id for node in self._nodes)
        deadline = time.monotonic() + timeout
        waiting = list(nodes)
        while waiting:
            for node in list(waiting):
                process = node.process
                if process is None or process.poll() is not None:
                    code = process.poll() if process is not None else None
                    raise ConfigurationError(
                        f"Kafka node {node.node_id} exited early with code {code}: {_tail(node.log_path)}"
                    )
                if metadata_broker_ids(self._host, node.port, timeout=2.0) == expected:
                    waiting.remove(node)
            if not waiting:
                return
            if time.monotonic() >= deadline:
                names = ", ".join(f"node {node.node_id} ({node.log_path})" for node in waiting)
                raise BrokerUnavailableError(f"Apache Kafka was not ready within {timeout:g}s: {names}")
            time.sleep(0.25)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        servers = ",".join(f"{self._host}:{node.port}" for node in self._nodes) or "not started"
        return f"KafkaCluster(nodes={self._count}, bootstrap_servers={servers!r}, data_dir={self._data_dir!s})"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner may read (a private key), never readable by others in between."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(text)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no output at {path})"
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or f"(no output; see {path})"
