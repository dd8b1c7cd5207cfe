"""`gpuburst ...`: the command-line entry point. Each subcommand lives in the module that owns it.

A subcommand module exposes `register(subparsers)`, which adds its parser and sets `func` to a
`(args) -> int` callable. Bad input raises `controller.runtime.errors.UserError`, printed here as one
line with exit status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from controller.runtime import errors

SUBCOMMANDS = (
    "controller.sim.command",
    "controller.sim.families",
    "controller.sim.evaluate",
    "controller.runtime.policy_file",
    "controller.app.live",
    "controller.app.demo",
    "controller.app.bench_tick",
    "controller.app.client",
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpuburst", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except errors.UserError as exc:
        print(f"gpuburst: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
