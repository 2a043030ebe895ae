"""Command-line start-up benchmark: each ``eventbus`` command timed as a whole process, from start to exit.

``python -m bench.cli [--runs N] [--warmup W] [--only help,schemas-list,...]``

Every command runs N times (after W runs not counted), round-robin so that a noisy moment hits all
commands alike; the figures are the wall time of the whole process (interpreter start, imports,
the command's own work, exit): median, min and max. The broker commands use an embedded broker
started here (or ``$EVENTBUS_BOOTSTRAP_SERVERS``) with topics under a prefix of their own, and a
SQLite file in a temporary folder. Targets of issue #10: ``--help`` under 0.3 s, ``schemas list``
under 0.5 s. ``python -c pass`` is the floor any Python command pays.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra._topics import apply_topics

from ._common import broker, settings_for, unique_name
from ._output import console, print_table, write_results

_SESSION = {
    "session_id": "session-bench",
    "coach_id": "coach-1",
    "user_id": "user-1",
    "scheduled_at": "2025-06-02T14:00:00Z",
    "session_type": "video-call",
    "cost_credits": 10,
}


@dataclass(frozen=True, slots=True)
class Case:
    """One command line to time, and the target it has (seconds, median), if any."""

    name: str
    args: tuple[str, ...]
    target_s: float | None = None
    python_only: bool = False
    """Runs the interpreter itself, not ``eventbus``."""


CASES = (
    Case("python -c pass", ("-c", "pass"), python_only=True),
    Case("help", ("--help",), target_s=0.3),
    Case("version", ("--version",)),
    Case("schemas-list", ("schemas", "list"), target_s=0.5),
    Case("schemas-list-json", ("schemas", "list", "--json")),
    Case("schemas-show", ("schemas", "show", "session:created")),
    Case("settings", ("settings", "--json")),
    Case("publish-help", ("publish", "--help")),
    Case("publish", ("publish", "session:created", "--data", json.dumps(_SESSION))),
    Case("topics-list", ("topics", "list", "--json")),
    Case("history", ("history", "-n", "5", "--json")),
    Case("dlq-list", ("dlq", "list", "--json")),
    Case("credits-balance", ("credits", "balance", "user-1")),
)


def _eventbus() -> list[str]:
    """The installed console script beside this interpreter, else the module through the interpreter."""
    script = Path(sys.executable).with_name("eventbus")
    if script.exists():
        return [str(script)]
    found = shutil.which("eventbus")
    return [found] if found else [sys.executable, "-c", "from infra._cli import main; main()"]


def _time(command: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one run; fails loudly when the command fails (a failing run measures nothing)."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, check=False, timeout=120)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])}… exited {done.returncode}: {done.stderr.decode()[-400:]}")
    return elapsed


def measure(cases: list[Case], env: dict[str, str], runs: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per run of each case, interleaved: run r of every case before run r + 1 of any."""
    eventbus = _eventbus()
    commands = {case.name: ([sys.executable] if case.python_only else eventbus) + list(case.args) for case in cases}
    for _ in range(warmup):
        for case in cases:
            _time(commands[case.name], env)
    samples: dict[str, list[float]] = {case.name: [] for case in cases}
    for run in range(1, runs + 1):
        for case in cases:
            samples[case.name].append(_time(commands[case.name], env))
        console.print(f"  run {run}/{runs}: " + "  ".join(f"{name} {s[-1]:.3f}" for name, s in samples.items()))
    return samples


def summarize(cases: list[Case], samples: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Median, min and max per case, and whether its target is met (by the median)."""
    rows = []
    for case in cases:
        values = samples[case.name]
        median = statistics.median(values)
        rows.append(
            {
                "command": case.name,
                "args": list(case.args),
                "runs": len(values),
                "median_s": round(median, 4),
                "min_s": round(min(values), 4),
                "max_s": round(max(values), 4),
                "target_s": case.target_s,
                "met": None if case.target_s is None else median < case.target_s,
            }
        )
    return rows


def main() -> None:
    """Time the commands and write ``bench/results/cli.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=7, help="counted runs per command (default 7)")
    parser.add_argument("--warmup", type=int, default=1, help="runs per command not counted (default 1)")
    parser.add_argument("--only", help=f"comma-separated commands among: {', '.join(c.name for c in CASES)}")
    options = parser.parse_args()
    cases = [c for c in CASES if not options.only or c.name in options.only.split(",")]
    with broker() as bootstrap, tempfile.TemporaryDirectory() as folder:
        prefix = unique_name("cli")
        settings = settings_for(bootstrap, prefix)
        asyncio.run(apply_topics(settings.connection(), replication_factor=1))
        env = {
            **os.environ,
            "EVENTBUS_BOOTSTRAP_SERVERS": bootstrap,
            "EVENTBUS_PROFILE": "embedded",
            "EVENTBUS_TOPIC_PREFIX": prefix,
            "EVENTBUS_DATABASE_URL": f"sqlite:///{folder}/bench.sqlite",
        }
        console.print(f"timing {len(cases)} commands, {options.runs} runs each (+{options.warmup} warm-up)")
        samples = measure(cases, env, options.runs, options.warmup)
    rows = summarize(cases, samples)
    print_table(
        "eventbus commands, whole process (wall seconds)",
        ("command", "median", "min", "max", "target", "met"),
        [
            (
                row["command"],
                f"{row['median_s']:.3f}",
                f"{row['min_s']:.3f}",
                f"{row['max_s']:.3f}",
                "" if row["target_s"] is None else f"< {row['target_s']}",
                "" if row["met"] is None else ("yes" if row["met"] else "no"),
            )
            for row in rows
        ],
    )
    write_results("cli", {"runs": options.runs, "warmup": options.warmup, "commands": rows})


if __name__ == "__main__":
    main()
