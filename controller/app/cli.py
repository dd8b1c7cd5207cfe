"""`gpuburst ...`: the command-line entry point. Each subcommand lives in the module that owns it.

A subcommand module exposes `register(subparsers)`, which adds its parser and sets `func` to a
`(args) -> int` callable. Bad input raises `controller.runtime.errors.UserError`, printed here as one
line with exit status 2 (no traceback).

Only the module of the command being run is imported: the others pull in Pulumi, Kubernetes, FastAPI,
numpy or matplotlib, which would make `gpuburst --help` take seconds. `COMMANDS` carries each command's
one-line help for the listing; a test holds it equal to what the modules register.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module whose register() adds it, one-line help shown by `gpuburst --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": (
        "controller.sim.command",
        "replay a traffic scenario through gpuburst, the baselines and the oracle",
    ),
    "bench-sim": ("controller.sim.command", "benchmark: simulated seconds per wall second, per contender"),
    "scenarios": ("controller.sim.families", "generate evaluation scenarios from seeded families"),
    "evaluate": (
        "controller.sim.evaluate",
        "run gpuburst, the baselines and the oracles over shipped and generated scenarios",
    ),
    "policy": ("controller.runtime.policy_file", "burst policy files"),
    "run": ("controller.app.live", "the live controller"),
    "demo": (
        "controller.app.demo",
        "the embedded live loop: local workers, a real Prometheus, a shipped trace replayed",
    ),
    "status": ("controller.app.client", "API: the controller's last tick"),
    "nodes": ("controller.app.client", "API: burst nodes"),
    "decisions": ("controller.app.client", "API: latest decisions"),
    "audit": ("controller.app.client", "API: the audit log"),
    "override": ("controller.app.client", "API: set (or --clear) the operator's overrides"),
    "reconcile": ("controller.app.client", "API: tick now"),
    "drain": ("controller.app.client", "API: drain and release one node (not relaunched)"),
    "pool": ("controller.app.client", "API: pause or resume a pool's launches and releases"),
    "whatif": ("controller.app.client", "API: replay a trace through gpuburst, the baselines and the oracle"),
    "token": ("controller.app.client", "admin API tokens"),
    "store": ("controller.app.store_admin", "the controller's SQLite store"),
    "bench-tick": (
        "controller.app.bench_tick",
        "median cost of one reconcile tick (100 workloads x 10 pools)",
    ),
}

EXTENSIONS: dict[str, tuple[str, str]] = {"policy": ("controller.app.client", "register_policy")}
"""Commands another module adds verbs to: (module, its function that takes the subparsers)."""


EXTRAS: dict[str, str] = {
    "controller.sim.command": "sim",
    "controller.sim.families": "sim",
    "controller.sim.evaluate": "sim",
    "controller.app.demo": "workload,sim",
}
"""Modules whose command needs an optional extra of the package (the base install is the controller)."""


def _chosen(argv: Sequence[str]) -> str | None:
    """The command named on the line: the first word that is not an option."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; the command named in `argv` gets its full arguments, the rest only their help line."""
    p = argparse.ArgumentParser(prog="gpuburst", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = _chosen(argv)
    full = COMMANDS[chosen][0] if chosen else None
    for name, (module, help_line) in COMMANDS.items():
        if module == full:
            try:
                importlib.import_module(module).register(sub)
            except ModuleNotFoundError as exc:
                if module not in EXTRAS:
                    raise
                p.exit(
                    2, f"gpuburst: error: {name} needs {exc.name}: pip install 'gpuburst[{EXTRAS[module]}]'\n"
                )
            full = None
        elif chosen is None or COMMANDS[name][0] != COMMANDS[chosen][0]:
            sub.add_parser(name, help=help_line)
    if chosen in EXTENSIONS:
        module, function = EXTENSIONS[chosen]
        getattr(importlib.import_module(module), function)(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser(argv).parse_args(argv)
    from controller.runtime import errors

    try:
        return int(args.func(args))
    except errors.UserError as exc:
        print(f"gpuburst: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A file or port the user named (an output that filled the disk, a path gone mid-run).
        if exc.filename is None:
            raise
        print(f"gpuburst: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
