"""``eventbus gateway``: the HTTP gateway (Server-Sent Events, publishing, stats, history, the operator console) in
the foreground; ``eventbus console``: the same, with the console opened in a browser."""

from __future__ import annotations

import asyncio
import signal
import socket
import webbrowser
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from consumers import ConsumerGroup, Database, GroupSettings, MemoryCache, Resources

from ._cli_common import cli_errors, stop_signals_while_starting
from ._logging import configure_logging
from ._settings import Settings, load_settings
from ._telemetry import configure_telemetry

if TYPE_CHECKING:
    from .bus import EventBus

__all__ = ["console_command", "gateway", "listen_socket", "serve_gateway"]

_GRACEFUL_S = 5


def listen_socket(host: str, port: int) -> socket.socket:
    """The bound, listening socket, before anything else starts: a taken port is a clean error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until the server accepts them: none is refused
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc
    return sock


async def serve_gateway(
    bus: EventBus,
    settings: Settings,
    sock: socket.socket,
    stop: asyncio.Event,
    force: asyncio.Event | None = None,
    *,
    groups: Sequence[ConsumerGroup] = (),
    database: Database | None = None,
) -> None:
    """Serve the gateway's app over ``bus`` on ``sock`` until ``stop`` is set (open streams end at once).

    ``force`` set as well: stop waiting for open connections. The operator console (``/console/``) shows
    ``groups``, and who handled what from ``database``'s processed events.
    Example: ``await serve_gateway(bus, s, sock, stop)``
    """
    import uvicorn  # noqa: PLC0415 - the web stack only when serving

    from ._asyncapi import asyncapi_document  # noqa: PLC0415
    from ._console_api import ConsoleSources, close_console  # noqa: PLC0415
    from ._gateway_app import GatewayServer, begin_shutdown, create_app  # noqa: PLC0415

    contract = asyncapi_document(topic_prefix=settings.connection().topic_prefix, replication=settings.replication)
    console = ConsoleSources(
        settings.connection(),
        settings.publisher_config("eventbus-console"),
        groups,
        database,
        engine=settings.profile,
    )
    app = create_app(bus, settings.http_config(), asyncapi=contract, console=console)
    # access_log off: EventSource sends its token in the query string, which an access log would keep
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=_GRACEFUL_S
    )
    server = GatewayServer(config)

    async def stopping() -> None:
        await stop.wait()
        begin_shutdown(app)  # streams end now; browsers reconnect elsewhere with their Last-Event-ID
        server.should_exit = True
        if force is not None:
            await force.wait()
            server.force_exit = True

    watcher = asyncio.create_task(stopping())
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()
        await close_console(app)


async def _serve(settings: Settings, sock: socket.socket, early: list[int]) -> None:
    from ._composition import marketplace_groups  # noqa: PLC0415
    from .bus import EventBus  # noqa: PLC0415

    # the marketplace's groups, for their lag in /v1/stats (built on resources the gateway never uses)
    database = Database(settings.database_url)
    groups = list(marketplace_groups(Resources(database=database, cache=MemoryCache(), settings=GroupSettings())))
    stop, force = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():  # the second signal: stop waiting for open connections
            force.set()
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    try:
        if early:  # asked to stop while starting: stop cleanly (exit 0) before connecting
            return
        async with EventBus.connect(settings, service="eventbus-gateway", groups=groups) as bus:
            await serve_gateway(bus, settings, sock, stop, force, groups=groups, database=database)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await database.close()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="Port to bind.")
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--log-format", type=click.Choice(["json", "text"]), default="json", show_default=True)
def gateway(host: str, port: int, log_level: str, log_format: str) -> None:
    """Serve events over HTTP: SSE streams, publishing, stats and history, behind JWT auth.

    Instances share nothing but Kafka: run as many side by side as needed. Tokens are checked with
    EVENTBUS_HTTP_JWT_SECRET (HS256) or EVENTBUS_HTTP_JWT_PUBLIC_KEY_FILE (RS256/ES256). Stops cleanly
    on SIGTERM/SIGINT (open streams end; a second signal stops waiting for them). OpenAPI at /docs.
    """
    with stop_signals_while_starting() as early, cli_errors():
        configure_logging(level=log_level, json_format=log_format == "json")
        configure_telemetry("eventbus-gateway")
        settings = load_settings()
        from ._gateway_auth import TokenVerifier  # noqa: PLC0415 - refuse to start before connecting to Kafka

        TokenVerifier(settings.http_config())
        sock = listen_socket(host, port)
        try:
            asyncio.run(_serve(settings, sock, early))
        finally:
            sock.close()


@click.command("console")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="Port to bind.")
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--log-format", type=click.Choice(["json", "text"]), default="text", show_default=True)
@click.option("--no-browser", is_flag=True, help="Print the console's address, open no browser.")
def console_command(host: str, port: int, log_level: str, log_format: str, no_browser: bool) -> None:
    """The gateway with the operator console opened: groups, lag, dead letters, replay, the flow of a booking.

    Sign in as admin (reads) or operator (also replays and resets offsets). Same settings as
    `eventbus gateway`; the console is at /console/ (and /ui/console/).
    """
    with stop_signals_while_starting() as early, cli_errors():
        configure_logging(level=log_level, json_format=log_format == "json")
        settings = load_settings()
        from ._gateway_auth import TokenVerifier  # noqa: PLC0415

        TokenVerifier(settings.http_config())
        sock = listen_socket(host, port)
        url = f"http://{host}:{port}/ui/console/"
        click.echo(f"eventbus console: {url}")
        if not no_browser:
            webbrowser.open(url)
        try:
            asyncio.run(_serve(settings, sock, early))
        finally:
            sock.close()
