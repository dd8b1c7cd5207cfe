"""`gpuburst store backup --config FILE OUT`: a consistent copy of the controller's SQLite store.

Safe while the controller runs (SQLite's online backup reads alongside it in WAL mode). To restore: stop
the controller, put the copy at the config's `store.path`, start it; the integrity check at start
refuses a damaged file with the same instructions.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from controller.app import config as config_mod
from controller.runtime import errors, store


def backup(args: argparse.Namespace) -> int:
    loaded = config_mod.load(args.config)
    if loaded.config.store.url is not None:
        loaded.open_store().backup(args.out)  # a PostgreSQL store: says to use pg_dump
    if not loaded.store_path.exists():
        raise errors.UserError(f"{loaded.source}: store.path: {loaded.store_path} does not exist yet")
    db = store.SqliteStore(loaded.store_path)
    try:
        db.backup(args.out)
    finally:
        db.close()
    print(f"wrote {args.out} (a copy of {loaded.store_path})")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("store", help="the controller's SQLite store", description=__doc__.splitlines()[0])
    actions = p.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    b = actions.add_parser("backup", help="copy the store, safely while the controller runs")
    b.add_argument("--config", required=True, type=Path, help="controller config naming store.path")
    b.add_argument("out", type=errors.output_path, help="where to write the copy")
    b.set_defaults(func=backup)
