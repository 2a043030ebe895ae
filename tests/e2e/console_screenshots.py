"""Screenshots of the operator console for the README (not a test): Overview, Dead letters and Flow.

Runs ``tests/e2e/test_console.py`` (an embedded broker, ``eventbus gateway``, the marketplace's notifications and
credits groups, Debian's headless Chromium) with ``EVENTBUS_CONSOLE_SCREENSHOTS`` set, which saves 1280x800 PNGs.

Run from the repository root: ``.venv/bin/python -m tests.e2e.console_screenshots`` (writes
``docs/screens/console-overview.png``, ``console-dead-letters.png``, ``console-flow.png``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

__all__ = ["main"]


def main() -> int:
    """Run the console's end-to-end tests, saving their screenshots in ``docs/screens``; pytest's exit code."""
    out = Path(__file__).resolve().parents[2] / "docs" / "screens"
    out.mkdir(parents=True, exist_ok=True)
    os.environ["EVENTBUS_CONSOLE_SCREENSHOTS"] = str(out)
    return int(pytest.main(["-q", "-p", "no:cacheprovider", str(Path(__file__).with_name("test_console.py"))]))


if __name__ == "__main__":
    sys.exit(main())
