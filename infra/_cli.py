"""The ``eventbus`` command line: a click group that imports a command's module only when it runs.

``eventbus --help`` imports click and this module, nothing else: no Kafka client, database or
rich. Each command lives in ``infra/_cli_<command>.py`` and is named in ``COMMANDS`` with the
one-line help the listing shows (a test keeps that line equal to the command's own).
"""

from __future__ import annotations

import importlib
import io
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import click

__all__ = ["COMMANDS", "LazyGroup", "main"]

COMMANDS: Mapping[str, tuple[str, str]] = {
    "analytics": (
        "infra._cli_analytics:analytics",
        "Event counts kept by the `analytics` group (EVENTBUS_DATABASE_URL).",
    ),
    "asyncapi": (
        "infra._cli_asyncapi:asyncapi",
        "The AsyncAPI 3.0 document of the topics, events and consumer groups, generated from the catalog.",
    ),
    "broker": ("infra._cli_broker:broker", "Run an embedded Kafka-protocol broker until Ctrl-C."),
    "console": (
        "infra._cli_gateway:console_command",
        "The gateway with the operator console opened: groups, lag, dead letters, replay, the flow of a booking.",
    ),
    "credits": (
        "infra._cli_credits:credits_group",
        "User credit balances (EVENTBUS_DATABASE_URL; the `credits` group deducts completed sessions).",
    ),
    "demo": (
        "infra._cli_demo:demo",
        "The main job: the five groups on a live marketplace, then a summary that checks itself.",
    ),
    "dlq": ("infra._cli_dlq:dlq", "Dead letters: the system:error events on the system topic."),
    "gateway": (
        "infra._cli_gateway:gateway",
        "Serve events over HTTP: SSE streams, publishing, stats and history, behind JWT auth.",
    ),
    "history": ("infra._cli_history:history", "The last N events across all entity topics, newest last."),
    "notifications": (
        "infra._cli_notifications:notifications_group",
        "In-app notifications (EVENTBUS_DATABASE_URL; written by the `notifications` group).",
    ),
    "outbox": (
        "infra._cli_outbox:outbox",
        "The transactional outbox: what waits to be sent, who sends it, what could not be sent.",
    ),
    "publish": (
        "infra._cli_publish:publish",
        "Validate and publish one EVENT_TYPE event; print where it was stored as one JSON line.",
    ),
    "relay": (
        "infra._cli_relay:relay",
        "Send committed outbox rows to Kafka until SIGTERM/SIGINT; relays of one database share the work.",
    ),
    "run": ("infra._cli_run:run", "Run consumer GROUPS until SIGTERM/SIGINT (a second signal exits at once)."),
    "schemas": ("infra._cli_schemas:schemas", "The event catalog: types, topics, keys and Avro writer schemas."),
    "settings": (
        "infra._cli_settings:show_settings",
        "The effective settings (EVENTBUS_* environment and profile defaults), secrets masked.",
    ),
    "stats": (
        "infra._cli_stats:stats",
        "The original getStats(): total events, subscriptions, events by type; plus lag per group and partition.",
    ),
    "tail": (
        "infra._cli_tail:tail",
        "Follow the entity TOPICS (session, coach, ...; default: all) and print each event.",
    ),
    "topics": (
        "infra._cli_topics:topics",
        "The entity topics (one per catalog entity, under EVENTBUS_TOPIC_PREFIX).",
    ),
}
"""Command name -> (``module:attribute`` of the click command, its one-line help for the listing)."""

_CLICK_PREFIX = re.compile(r"^Error: ", re.MULTILINE)


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use, from ``module:attribute`` paths.

    Its listing (``--help``) uses the help lines given with the paths, so it imports nothing.
    Errors click reports itself (usage errors, ``ClickException``) start with ``error:`` like ours.
    Example: ``LazyGroup(name="tool", lazy_commands={"run": ("pkg.cli:run", "Run it.")})``
    """

    def __init__(self, *args: Any, lazy_commands: Mapping[str, tuple[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands: dict[str, tuple[str, str]] = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command name, loaded or not, sorted."""
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command called ``cmd_name``, importing its module the first time."""
        if cmd_name in self.lazy_commands and cmd_name not in self.commands:
            module_name, _, attribute = self.lazy_commands[cmd_name][0].partition(":")
            command = getattr(importlib.import_module(module_name), attribute)
            if not isinstance(command, click.Command):
                msg = f"{self.lazy_commands[cmd_name][0]} is a {type(command).__name__}, not a click command"
                raise TypeError(msg)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command listing, from the registered help lines (no command module is imported)."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in self.lazy_commands and name not in self.commands:
                # A bare command with the registered text shortens it exactly as the real one would.
                stand_in = click.Command(name, help=self.lazy_commands[name][1])
                rows.append((name, stand_in.get_short_help_str(limit)))
            elif not (command := self.commands[name]).hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; in standalone mode, exit with the command's status."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            status = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            _show(exc)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(status if isinstance(status, int) else 0)


def _show(exc: click.ClickException) -> NoReturn:
    """Click's own report of ``exc`` (usage line, hint), with our ``error:`` prefix; then exit."""
    report = io.StringIO()
    exc.show(file=report)
    click.echo(_CLICK_PREFIX.sub("error: ", report.getvalue()), err=True, nl=False)
    sys.exit(exc.exit_code)


@click.group(
    cls=LazyGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="eventbus")
def main() -> None:
    """Kafka-backed events for the coaching marketplace.

    Settings come from EVENTBUS_* environment variables (see `eventbus settings`).
    """
