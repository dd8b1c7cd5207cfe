"""The compiled replay (`make bench`) decides exactly as the Python one: a construct mypyc compiles
differently, or a module that no longer compiles, shows here rather than as a wrong benchmark."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from controller.sim import compiled

SCENARIOS = ("step-spike", "flash-crowd")

DIGEST = """
import hashlib, json, sys
from controller.runtime import policy_file
from controller.sim import compiled, contenders, scenario
out = {"compiled": compiled.active()}
for name in sys.argv[1:]:
    r = contenders.run(scenario.load(name), "gpuburst", burst_policy=policy_file.load())
    series = r.ready_gpus.tobytes() + r.billed_nodes.tobytes() + r.usd_per_hour.tobytes() + r.missed.tobytes()
    out[name] = [hashlib.sha256(series).hexdigest(), r.launches, r.met]
print(json.dumps(out))
"""


def _replay(tmp_path: Path, *, pythonpath: Path | None) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)} if pythonpath else dict(os.environ)
    done = subprocess.run(
        [sys.executable, "-c", DIGEST, *SCENARIOS],
        cwd=tmp_path,  # `python -c` puts its folder first: the source tree's must not be it
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.skipif(shutil.which("cc") is None, reason="mypyc needs a C compiler")
def test_the_compiled_replay_decides_exactly_as_the_python_one(tmp_path: Path) -> None:
    dest = compiled.build(tmp_path / "compiled", opt_level=0)
    got = _replay(tmp_path, pythonpath=dest)
    want = _replay(tmp_path, pythonpath=None)
    assert got.pop("compiled") is True  # the replay ran the extensions, not the copied .py files
    assert want.pop("compiled") is False
    for name in SCENARIOS:
        assert got[name] == want[name], name
