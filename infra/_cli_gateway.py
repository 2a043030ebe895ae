"""``eventbus gateway``: the HTTP gateway (Server-Sent Events, publishing, stats, history) in the foreground."""

from __future__ import annotations

import asyncio
import signal
import socket

import click

from ._cli_common import cli_errors
from ._logging import configure_logging
from ._settings import Settings, load_settings

__all__ = ["gateway"]

_GRACEFUL_S = 5


def _listen(host: str, port: int) -> socket.socket:
    """The bound listening socket, before anything else starts: a taken port is a clean error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc
    return sock


async def _serve(settings: Settings, sock: socket.socket) -> None:
    import uvicorn  # noqa: PLC0415 - the web stack only when serving

    from ._asyncapi import asyncapi_document  # noqa: PLC0415
    from ._gateway_app import GatewayServer, begin_shutdown, create_app  # noqa: PLC0415
    from .bus import EventBus  # noqa: PLC0415

    config = settings.http_config()
    async with EventBus.connect(settings, service="eventbus-gateway") as bus:
        contract = asyncapi_document(topic_prefix=settings.connection().topic_prefix, replication=settings.replication)
        app = create_app(bus, config, asyncapi=contract)
        server = GatewayServer(
            uvicorn.Config(app, log_config=None, lifespan="off", timeout_graceful_shutdown=_GRACEFUL_S)
        )
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if server.should_exit:  # the second signal: stop waiting for open connections
                server.force_exit = True
            begin_shutdown(app)  # streams end now; browsers reconnect elsewhere with their Last-Event-ID
            server.should_exit = True

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal)
        try:
            await server.serve(sockets=[sock])
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)


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
    configure_logging(level=log_level, json_format=log_format == "json")
    with cli_errors():
        settings = load_settings()
        from ._gateway_auth import TokenVerifier  # noqa: PLC0415 - refuse to start before connecting to Kafka

        TokenVerifier(settings.http_config())
        sock = _listen(host, port)
        try:
            asyncio.run(_serve(settings, sock))
        finally:
            sock.close()
