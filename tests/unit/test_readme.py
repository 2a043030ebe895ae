"""The README stays true: its set-up commands, and its event catalog table against the catalog."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from schemas import CATALOG

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_first_screen_has_exactly_two_setup_commands_demo_then_tests() -> None:
    first_block = README.split("```sh", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(first_block) == 2
    assert first_block[0].endswith("eventbus demo")
    assert first_block[1].endswith(".venv/bin/pytest --cov")
    assert README.index("```sh") < 1200, "the set-up commands must be on the first screen"


def test_ci_runs_the_readme_test_command() -> None:
    command = subprocess.run(
        ["bash", "-c", 'grep -m1 -E "^python3 -m venv \\.venv .*services\\.sh.*pytest" README.md'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert command.endswith("bash infra/dev/services.sh && .venv/bin/pytest --cov")
    assert "grep -m1 -E" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_catalog_table_lists_every_event_type_with_its_topic_and_key() -> None:
    rows = {
        match.group(1): (match.group(2), match.group(3))
        for match in re.finditer(r"^\| `([a-z_]+:[a-z_]+)` \| `([a-z]+)` \| `([a-z_]+)` \|", README, re.MULTILINE)
    }
    assert rows == {spec.event_type: (spec.topic, spec.key_field) for spec in CATALOG}
