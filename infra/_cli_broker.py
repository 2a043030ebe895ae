"""``eventbus broker``: run an embedded broker in the foreground: Tansu (default) or Apache Kafka."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Protocol

import click

from schemas.errors import EventBusError

__all__ = ["broker"]


class _Shutdown(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised from the SIGINT/SIGTERM handler to leave the foreground wait."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Shutdown(signum)


class _Broker(Protocol):
    @property
    def bootstrap_servers(self) -> str: ...
    @property
    def running(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


@click.command()
@click.option(
    "--engine",
    type=click.Choice(["tansu", "kafka"]),
    default="tansu",
    show_default=True,
    help="tansu: memory only, pip only. kafka: Apache Kafka (KRaft) from Maven's jars; needs Java 17+ and Maven.",
)
@click.option("--nodes", type=click.Choice(["1", "3"]), default="1", show_default=True, help="Apache Kafka nodes.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=9092,
    show_default=True,
    help="TCP port on 127.0.0.1 (with --nodes 3 the nodes take PORT, PORT+1, PORT+2).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Apache Kafka only: keep the data here across restarts (default: a temporary folder).",
)
def broker(engine: str, nodes: str, port: int, data_dir: Path | None) -> None:
    """Run an embedded Kafka-protocol broker until Ctrl-C.

    Prints `bootstrap=HOST:PORT[,...]` on stdout once the broker answers Kafka requests.
    """
    if engine == "tansu" and (nodes != "1" or data_dir is not None):
        raise click.UsageError("--nodes and --data-dir need --engine kafka (Tansu is one node, memory only)")
    running: _Broker
    if engine == "tansu":
        from ._embedded import EmbeddedBroker  # noqa: PLC0415 - each engine imports only what it needs

        running = EmbeddedBroker(port=port)
        what, env = "embedded Tansu broker running (memory only)", "EVENTBUS_PROFILE=embedded"
    else:
        from ._kafka_cluster import KafkaCluster  # noqa: PLC0415

        running = KafkaCluster(nodes=int(nodes), port=port, data_dir=data_dir)
        kept = f"data in {data_dir}" if data_dir is not None else "data discarded at exit"
        what = f"Apache Kafka running ({nodes} node{'s' if nodes == '3' else ''}, {kept})"
        env = "EVENTBUS_PROFILE=kafka" + (" EVENTBUS_REPLICATION_FACTOR=1" if nodes == "1" else "")
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        running.start()
        click.echo(f"bootstrap={running.bootstrap_servers}")
        sys.stdout.flush()
        servers = running.bootstrap_servers
        click.echo(f"{what}; use EVENTBUS_BOOTSTRAP_SERVERS={servers} {env}; Ctrl-C stops it", err=True)
        while running.running:
            time.sleep(0.5)
    except _Shutdown:
        return
    except EventBusError as exc:
        raise click.ClickException(exc.message) from exc
    finally:
        for sig in previous:  # a second Ctrl-C must not interrupt the cleanup
            signal.signal(sig, signal.SIG_IGN)
        running.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo("error: the embedded broker exited unexpectedly", err=True)
    sys.exit(1)
