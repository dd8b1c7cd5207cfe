"""The replay's hot path compiled with mypyc (the compiler black and mypy ship themselves with).

A replay spends its time in the pure core and the loop around it: the same typed Python, compiled to C
extensions, runs it about twice as fast with the same floating-point operations, so it decides the same.
The build goes into a copy of the package (`python -m controller.sim.compiled build/compiled`, or
`make compiled`), run with `PYTHONPATH=build/compiled`: an extension in the source tree would shadow the
.py it was built from, and an edit there would silently not run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from controller.core import forecast

ROOT = Path(__file__).resolve().parents[2]

MODULES: tuple[str, ...] = (
    "controller/core",
    "controller/ports",
    "controller/runtime/reconciler.py",
    "controller/sim/engine.py",
    "controller/sim/gpuburst.py",
    "controller/sim/queue.py",
    "controller/sim/world.py",
)
"""What a gpuburst replay runs per simulated second or tick; the rest runs once per replay."""


def active() -> bool:
    """Whether this process runs the compiled core (a replay's figures say which they measured)."""
    return not forecast.__file__.endswith(".py")


def build(dest: Path, *, opt_level: int = 3) -> Path:
    """Copy `controller` (and the mypy settings the compiler reads) into dest and compile MODULES there.
    `opt_level` is the C compiler's: 0 builds in about half the time, for a check rather than speed."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copytree(ROOT / "controller", dest / "controller", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    done = subprocess.run(
        [sys.executable, "-m", "mypyc", *MODULES],
        cwd=dest,
        env={**os.environ, "MYPYC_OPT_LEVEL": str(opt_level)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"mypyc failed in {dest}:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="folder for the compiled copy (replaced)")
    dest = build(parser.parse_args().dest.resolve())
    print(f"compiled {len(MODULES)} modules into {dest}: run with PYTHONPATH={dest}")


if __name__ == "__main__":
    main()
