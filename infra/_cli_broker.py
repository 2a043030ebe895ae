"""``eventbus broker``: run the embedded Tansu broker in the foreground."""

from __future__ import annotations

import signal
import sys
from types import FrameType

import click

from schemas.errors import EventBusError

from ._embedded import EmbeddedBroker

__all__ = ["broker"]


class _Shutdown(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised from the SIGINT/SIGTERM handler to leave the foreground wait."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Shutdown(signum)


@click.command()
@click.option("--port", type=click.IntRange(1, 65535), default=9092, show_default=True, help="TCP port on 127.0.0.1.")
def broker(port: int) -> None:
    """Run a memory-only embedded Kafka broker (Tansu) until Ctrl-C.

    Prints `bootstrap=127.0.0.1:PORT` on stdout once the broker answers Kafka requests.
    """
    embedded = EmbeddedBroker(port=port)
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        embedded.start()
        click.echo(f"bootstrap={embedded.bootstrap_servers}")
        sys.stdout.flush()
        click.echo(
            "embedded Tansu broker running (memory only); use "
            f"EVENTBUS_BOOTSTRAP_SERVERS={embedded.bootstrap_servers} EVENTBUS_PROFILE=embedded; Ctrl-C stops it",
            err=True,
        )
        code = embedded.wait()
    except _Shutdown:
        return
    except EventBusError as exc:
        raise click.ClickException(exc.message) from exc
    finally:
        for sig in previous:  # a second Ctrl-C must not interrupt the cleanup
            signal.signal(sig, signal.SIG_IGN)
        embedded.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo(f"error: the embedded broker exited unexpectedly with code {code}", err=True)
    sys.exit(code or 1)
