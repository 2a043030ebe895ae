"""``eventbus run``: run consumer groups in the foreground."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal

import click

from consumers import (
    PROCESSED_EVENTS_MIGRATION,
    ConsumerGroup,
    Database,
    GroupRegistry,
    ProcessedEventStore,
    Resources,
    open_cache,
    run_groups,
)
from schemas.errors import ConfigurationError, EventBusError

from ._cli_common import serve_metrics, stop_signals_while_starting
from ._composition import marketplace_groups, marketplace_migrations
from ._logging import configure_logging
from ._settings import load_settings
from ._telemetry import configure_telemetry

__all__ = ["load_registry", "run"]


def load_registry(app: str | None, resources: Resources) -> GroupRegistry:
    """The marketplace's groups (``infra._composition``), or the ones at ``module:attribute``.

    The attribute is a GroupRegistry, a ConsumerGroup, or a callable taking
    the ``Resources`` and returning either.
    """
    if app is None:
        return marketplace_groups(resources)
    module_name, _, attribute = app.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), attribute or "REGISTRY")
    except (ImportError, AttributeError) as exc:
        msg = f"cannot load --app {app}: {exc}"
        raise ConfigurationError(msg) from exc
    if callable(target) and not isinstance(target, (ConsumerGroup, GroupRegistry)):
        target = target(resources)
    if isinstance(target, ConsumerGroup):
        return GroupRegistry([target])
    if not isinstance(target, GroupRegistry):
        msg = f"--app {app} is a {type(target).__name__}, not a GroupRegistry or ConsumerGroup"
        raise ConfigurationError(msg)
    return target


async def _serve(names: tuple[str, ...], app: str | None, concurrency: int | None, early: list[int]) -> None:
    """Run the groups until a signal; ``early``: signals received before the event loop's handlers were in place."""
    settings = load_settings()
    database = Database(settings.database_url)
    resources = Resources(database=database, cache=open_cache(settings.redis_url), settings=settings.group_settings())
    registry = load_registry(app, resources)
    groups = [registry.get(name) for name in names]
    store = ProcessedEventStore(database)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():  # the second signal: leave now; uncommitted records are redelivered
            os._exit(128 + signum)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        if early:  # asked to stop while starting: stop cleanly (exit 0) before consuming anything
            return
        await database.migrate(marketplace_migrations() if app is None else [PROCESSED_EVENTS_MIGRATION])
        await run_groups(
            groups,
            connection=settings.connection(),
            publisher_config=settings.publisher_config(service=f"eventbus-{'-'.join(names)}"),
            consumer_config=settings.consumer_config(),
            runtime_config=settings.runtime_config(concurrency=concurrency),
            stop=stop,
            store=store,
        )
    finally:
        await resources.cache.close()
        await database.close()


@click.command()
@click.argument("groups", nargs=-1, required=True)
@click.option("--concurrency", type=click.IntRange(1, 1024), help="Partitions handled at once per group.")
@click.option("--app", help="module:attribute of a GroupRegistry or ConsumerGroup (default: the built-in groups).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), help="Serve Prometheus metrics on this port.")
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics endpoint binds (0.0.0.0: every interface, for a scraper on another host).",
)
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--log-format", type=click.Choice(["json", "text"]), default="json", show_default=True)
def run(
    groups: tuple[str, ...],
    concurrency: int | None,
    app: str | None,
    metrics_port: int | None,
    metrics_host: str,
    log_level: str,
    log_format: str,
) -> None:
    """Run consumer GROUPS until SIGTERM/SIGINT (a second signal exits at once).

    Several processes running the same group share its partitions.
    """
    with stop_signals_while_starting() as early:
        configure_logging(level=log_level, json_format=log_format == "json")
        configure_telemetry("eventbus-consumers")
        serve_metrics(metrics_port, metrics_host)
        try:
            asyncio.run(_serve(groups, app, concurrency, early))
        except EventBusError as exc:
            raise click.ClickException(exc.message) from exc
