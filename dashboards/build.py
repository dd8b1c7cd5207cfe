"""Generate the dashboards' JSON and the rules file: `python -m dashboards.build [OUTDIR] [--check]`.

The generated files are committed (the workload stack publishes them as ConfigMaps, and operators import
them without running Python); a test keeps them equal to what this module generates.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.cog import encoder

from dashboards import controller, rules, workload

HERE = Path(__file__).resolve().parent


def dashboards() -> dict[str, dict[str, Any]]:
    """Each dashboard's JSON model, by its path relative to `dashboards/`."""
    out: dict[str, dict[str, Any]] = {}
    for module in (controller, workload):
        text = json.dumps(module.build().build(), cls=encoder.JSONEncoder)
        out[module.FILE] = json.loads(text)
    return out


def outputs() -> dict[str, str]:
    """Every generated file's text, by its path relative to `dashboards/`."""
    files = {path: json.dumps(model, indent=2, sort_keys=True) + "\n" for path, model in dashboards().items()}
    files[rules.RULES_FILE] = rules.render()
    return files


def write(outdir: Path) -> list[Path]:
    written = []
    for relative, text in outputs().items():
        path = outdir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale(outdir: Path) -> list[str]:
    """The generated files under `outdir` that are missing or differ from what the code generates."""
    out = []
    for relative, text in outputs().items():
        path = outdir / relative
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            out.append(relative)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.build", description=__doc__)
    parser.add_argument("outdir", nargs="?", type=Path, default=HERE, help="default: the dashboards package")
    parser.add_argument("--check", action="store_true", help="write nothing; fail if a file is out of date")
    args = parser.parse_args(argv)
    if args.check:
        behind = stale(args.outdir)
        for relative in behind:
            print(f"{args.outdir / relative} is out of date: run python -m dashboards.build", file=sys.stderr)
        return 1 if behind else 0
    for path in write(args.outdir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
