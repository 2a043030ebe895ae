"""What operators see: Prometheus metrics and JSON logs of `eventbus run`, and the main job `eventbus demo`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import text

from consumers import Database
from infra._settings import Settings
from producers import EventPublisher
from tests.events_factory import example_event
from tests.harness import POSTGRES_URL
from tests.integration.runtime_app import TABLE_DDL

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-c", "from infra._cli import main; main()"]
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        return str(response.read().decode())


def _clean_env(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("EVENTBUS_")}
    env.update(extra)
    return env


async def test_run_serves_prometheus_metrics_and_logs_json_lines(settings: Settings, tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path}/metrics.sqlite")
    async with database.begin() as conn:
        await conn.execute(text(TABLE_DDL))
    await database.close()
    port, group = _free_port(), f"metrics-{os.getpid()}-{int(time.time())}"
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "run",
        group,
        "--app",
        "tests.integration.runtime_app:REGISTRY",
        "--metrics-port",
        str(port),
        cwd=ROOT,
        env=_clean_env(
            EVENTBUS_BOOTSTRAP_SERVERS=settings.connection().bootstrap_servers,
            EVENTBUS_PROFILE="embedded",
            EVENTBUS_TOPIC_PREFIX=settings.connection().topic_prefix,
            EVENTBUS_DATABASE_URL=f"sqlite:///{tmp_path}/metrics.sqlite",
            EVENTBUS_TEST_GROUP=group,
        ),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with EventPublisher(connection=settings.connection(), config=settings.publisher_config("t")) as publisher:
            for n in range(5):
                await publisher.publish(example_event("session:created", session_id=f"metrics-{n}"))
        wanted = f'eventbus_handled_total{{event_type="session:created",group="{group}"}} 5.0'
        deadline = time.monotonic() + 40
        while True:
            try:
                page = await asyncio.to_thread(_scrape, port)
            except OSError:
                page = ""
            if wanted in page:
                break
            assert time.monotonic() < deadline, f"no {wanted!r} in /metrics"
            await asyncio.sleep(0.3)
        assert f'eventbus_consumed_total{{group="{group}"}}' in page
        assert "eventbus_handler_seconds_bucket" in page
        assert "eventbus_lag" in page
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    assigned = [line for line in lines if line["message"] == "partitions assigned"]
    assert assigned
    assert assigned[0]["group"] == group
    assert {"time", "level", "logger"} <= assigned[0].keys()


@pytest.mark.timeout(180)
def test_the_main_job_runs_on_the_embedded_defaults_and_its_checks_hold(tmp_path: Path) -> None:
    """`eventbus demo` starts its own broker, uses a temporary SQLite database and exits 0 only if all checks hold."""
    done = subprocess.run(
        [*CLI, "demo", "--duration", "4", "--no-live"],
        cwd=tmp_path,
        env=_clean_env(PYTHONPATH=str(ROOT), COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAILED" not in done.stdout
    for check in ("one pair of notifications per booking", "analytics counts = events on the topics"):
        assert check in done.stdout


def _burn_cpu() -> list[subprocess.Popen[bytes]]:
    """One busy-looping process per core: the machine our users run the demo on is doing other work."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_the_main_job_holds_its_checks_with_every_core_saturated_and_on_a_used_database(
    engine: str, tmp_path: Path
) -> None:
    """Lock conflicts and slow handlers under CPU contention are retried, never dead-lettered; a second run on the
    same database (the first run's rows still there) checks only its own users, sessions and payments."""
    url = f"sqlite:///{tmp_path}/demo.sqlite" if engine == "sqlite" else POSTGRES_URL
    env = _clean_env(PYTHONPATH=str(ROOT), COLUMNS="200", EVENTBUS_DATABASE_URL=url)
    hogs = _burn_cpu()
    try:
        for run in ("first", "second"):
            done = subprocess.run(
                [*CLI, "demo", "--duration", "5", "--no-live"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=280,
                check=False,
            )
            assert done.returncode == 0, f"{run} run:\n{done.stdout}{done.stderr}"
            assert "FAILED" not in done.stdout
            [dead_letters] = [line for line in done.stdout.splitlines() if "no unexpected dead letters" in line]
            assert [cell.strip() for cell in dead_letters.split("│")][2:4] == ["ok", "none"]
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
