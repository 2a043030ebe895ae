"""``eventbus relay``: send committed outbox rows to Kafka, in the foreground, until a signal."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Sequence

import click

from consumers import Database, OutboxRelay

from ._cli_common import cli_errors, serve_metrics, stop_signals_while_starting
from ._composition import marketplace_migrations
from ._logging import configure_logging
from ._settings import load_settings
from ._telemetry import configure_telemetry

__all__ = ["relay", "run_relay"]


async def run_relay(stop: asyncio.Event | None = None, *, early: Sequence[int] = ()) -> None:
    """Apply the migrations and relay the outbox of ``EVENTBUS_DATABASE_URL`` until ``stop`` (or a signal).

    ``early``: signals received while starting, before this installs its handlers; if any, it stops at once.
    """
    settings = load_settings()
    database = Database(settings.database_url)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():  # the second signal: leave now; unsent rows stay in the outbox
            os._exit(128 + signum)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        if early:  # asked to stop while starting: stop cleanly (exit 0) before relaying anything
            return
        await database.migrate(marketplace_migrations())
        from prometheus_client import REGISTRY  # noqa: PLC0415

        relay = OutboxRelay(
            database,
            connection=settings.connection(),
            publisher_config=settings.publisher_config(service="eventbus-relay"),
            config=settings.relay_config(),
            registry=REGISTRY,
        )
        await relay.run(stop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await database.close()


@click.command()
@click.option("--metrics-port", type=click.IntRange(1, 65535), help="Serve Prometheus metrics on this port.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address the metrics endpoint binds.")
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--log-format", type=click.Choice(["json", "text"]), default="json", show_default=True)
def relay(metrics_port: int | None, metrics_host: str, log_level: str, log_format: str) -> None:
    """Send committed outbox rows to Kafka until SIGTERM/SIGINT; relays of one database share the work.

    Exactly once on Apache Kafka (Kafka transactions carry the relay's progress), at least once with the
    event's own id on the embedded broker (consumers apply it once). EVENTBUS_OUTBOX_* settings.
    """
    with stop_signals_while_starting() as early, cli_errors():
        configure_logging(level=log_level, json_format=log_format == "json")
        configure_telemetry("eventbus-relay")
        serve_metrics(metrics_port, metrics_host)
        asyncio.run(run_relay(early=early))
