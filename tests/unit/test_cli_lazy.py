"""The command line loads lazily and still lists every command; its errors read one way; reading creates nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from infra._cli import COMMANDS, main
from infra._cli_common import stop_signals_while_starting
from infra._settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
_HEAVY = ("aiokafka", "sqlalchemy", "prometheus_client", "redis", "asyncpg", "aiosqlite", "consumers", "producers")


def _modules_loaded_by(args: list[str], heavy: tuple[str, ...] = _HEAVY) -> list[str]:
    """Top-level modules of ``heavy`` imported by running ``eventbus ARGS`` in a fresh interpreter."""
    script = (
        "import json, sys\n"
        "from infra._cli import main\n"
        f"main({args!r}, standalone_mode=False)\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


def test_help_lists_every_command_with_its_own_help_line() -> None:
    result = CliRunner().invoke(main, ["--help"])

    assert result.exit_code == 0, result.output
    listing = result.stdout.split("Commands:", 1)[1]
    listed = [line.split()[0] for line in listing.strip().splitlines()]
    assert listed == sorted(COMMANDS)
    ctx = click.Context(main)
    for name, (_, help_line) in COMMANDS.items():
        command = main.get_command(ctx, name)
        assert command is not None
        assert command.name == name
        assert command.get_short_help_str(limit=1000) == help_line, f"update the help line of {name!r} in COMMANDS"


def test_every_command_module_is_registered() -> None:
    modules = {path.stem for path in (ROOT / "infra").glob("_cli_*.py")} - {"_cli_common"}
    registered = {path.split(":")[0].removeprefix("infra.") for path, _ in COMMANDS.values()}
    assert modules <= registered


def test_help_imports_neither_the_kafka_client_nor_the_database_layer() -> None:
    assert _modules_loaded_by(["--help"], (*_HEAVY, "rich", "pydantic", "schemas", "fastavro")) == []


def test_schemas_list_imports_neither_the_kafka_client_nor_the_database_layer() -> None:
    assert _modules_loaded_by(["schemas", "list", "--json"]) == []


def test_usage_errors_start_with_the_same_lowercase_prefix_as_ours() -> None:
    result = CliRunner().invoke(main, ["no-such-command"])

    assert result.exit_code == 2
    assert "error: No such command 'no-such-command'" in result.stderr
    assert "Error:" not in result.stderr


def test_a_model_level_settings_error_names_the_settings_it_is_about() -> None:
    result = CliRunner().invoke(main, ["topics", "list"], env={"EVENTBUS_SECURITY_PROTOCOL": "SASL_PLAINTEXT"})

    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid settings: EVENTBUS_SASL_MECHANISM")
    assert ": :" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [["credits", "balance", "user-1"], ["notifications", "list", "user-1"], ["analytics", "summary", "--json"]],
)
def test_commands_that_only_read_create_no_database(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(main, args, env={"EVENTBUS_DATABASE_URL": "sqlite:///eventbus.sqlite"})

    assert result.exit_code == 0, result.output
    assert list(tmp_path.iterdir()) == []


def test_a_stop_signal_while_starting_is_recorded_not_fatal_and_the_previous_handlers_come_back() -> None:
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    with stop_signals_while_starting() as early:
        os.kill(os.getpid(), signal.SIGTERM)

    assert early == [signal.SIGTERM]
    assert {signum: signal.getsignal(signum) for signum in before} == before


@pytest.mark.parametrize("command", ["relay", "gateway"])
def test_a_command_asked_to_stop_while_starting_stops_before_connecting(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listens on port 9 here: connecting would fail, so a clean return shows it never tried."""
    monkeypatch.setenv("EVENTBUS_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    monkeypatch.setenv("EVENTBUS_DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")
    if command == "relay":
        from infra._cli_relay import run_relay  # noqa: PLC0415

        asyncio.run(asyncio.wait_for(run_relay(early=[signal.SIGTERM]), timeout=30))
    else:
        from infra._cli_gateway import _serve  # noqa: PLC0415

        with socket.socket() as sock:
            asyncio.run(asyncio.wait_for(_serve(load_settings(), sock, [signal.SIGTERM]), timeout=30))
