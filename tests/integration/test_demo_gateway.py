"""``eventbus demo --gateway``: the main job on the embedded defaults, with the screens served while it runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from infra._broker_probe import free_port

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"


class Output:
    """A process's output lines, collected by a thread (so the test never blocks on a pipe)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))

    def join(self) -> None:
        """Wait until the process's output is closed (it ended)."""
        self._thread.join(timeout=30)

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} within {timeout_s:g} s:\n" + "\n".join(self.lines[-40:]))


def _sse_events(client: httpx.Client, url: str, token: str, wanted: int, timeout_s: float) -> list[str]:
    """The ``event:`` names of the first ``wanted`` events of an SSE stream."""
    names: list[str] = []
    with client.stream("GET", url, params={"access_token": token}, timeout=timeout_s) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event:"):
                names.append(line.split(":", 1)[1].strip())
                if len(names) >= wanted:
                    break
    return names


@pytest.fixture
def demo_with_screens() -> Iterator[tuple[subprocess.Popen[str], Output, int]]:
    port = free_port(HOST)
    env = {name: value for name, value in os.environ.items() if not name.startswith("EVENTBUS_")}
    command = [sys.executable, "-c", "from infra._cli import main; main()", "demo", "--duration", "6", "--no-live"]
    command += ["--gateway", "--no-browser", "--host", HOST, "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = Output(process)
    try:
        yield process, output, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        output.join()
        assert process.stdout is not None
        process.stdout.close()


@pytest.mark.timeout(240)
def test_demo_gateway_serves_the_marketplace_live_on_the_screens_and_stops_on_ctrl_c(
    demo_with_screens: tuple[subprocess.Popen[str], Output, int],
) -> None:
    process, output, port = demo_with_screens
    base = f"http://{HOST}:{port}"
    link = output.wait_for(rf"client (\S+): {re.escape(base)}/ui/#/login\?sub=(\S+)&role=user&go=1", 120)
    assert link.group(1) == link.group(2)
    with httpx.Client(base_url=base) as client:
        assert client.get("/ui/").status_code == 200
        assert client.get("/v1/ui/config").json()["dev_tokens"] is True
        token = client.post("/dev/token", json={"sub": "demo-admin", "roles": ["admin"]}).json()["access_token"]
        names = _sse_events(client, "/v1/events", token, wanted=5, timeout_s=60)
        assert len(names) == 5, "the demo's marketplace is live on the gateway's stream"
        output.wait_for(r"every booking's events left the outbox", 180)  # the summary; the screens stay up
        output.wait_for(r"until Ctrl-C", 30)
        # stats count every record of every partition, one partition at a time: seconds on the demo's topics
        stats = client.get("/v1/stats", headers={"Authorization": f"Bearer {token}"}, timeout=60).json()
        assert stats["totalEvents"] > 0
        assert {group["group"] for group in stats["groups"]} >= {"notifications", "credits", "payments"}
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0, "\n".join(output.lines[-30:])
    assert not any("FAILED" in line for line in output.lines)
    assert json.dumps(output.lines).count("ok") >= 7
