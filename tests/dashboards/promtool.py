"""Debian's promtool (`make prometheus` installs it), the PromQL parser and rule tester the tests use."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PROMTOOL = os.environ.get("PROMTOOL_BIN") or shutil.which("promtool") or "/usr/bin/promtool"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    if not Path(PROMTOOL).is_file():
        pytest.fail(f"promtool not found at {PROMTOOL}: `make prometheus` installs Debian's prometheus")
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)
