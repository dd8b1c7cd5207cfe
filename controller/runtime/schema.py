"""The store's SQLite schema: ordered migrations recorded in `schema_version`, applied one per
transaction so a second process migrating at the same time is harmless."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

# One hour of cost per ledger bucket: enough to see what a peak cost without keeping every tick.
LEDGER_BUCKET_S = 3600.0


class StoreError(Exception):
    """The database cannot be used as it is (newer schema, undecodable state, file removed)."""


# -- migrations -------------------------------------------------------------------------------------
def _v1_initial(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE controller_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL,
            at REAL,
            policy_state TEXT NOT NULL)"""
    )
    conn.execute("INSERT INTO controller_state (id, version, at, policy_state) VALUES (1, 0, NULL, '{}')")
    conn.execute(
        """CREATE TABLE nodes (
            name TEXT PRIMARY KEY,
            pool TEXT NOT NULL,
            status TEXT NOT NULL,
            since REAL NOT NULL,
            requested_at REAL NOT NULL,
            ready_at REAL,
            reason TEXT NOT NULL DEFAULT '')"""
    )
    conn.execute(
        """CREATE TABLE decisions (
            id INTEGER PRIMARY KEY,
            version INTEGER NOT NULL,
            at REAL NOT NULL,
            action TEXT NOT NULL,
            decision TEXT NOT NULL,
            inputs TEXT NOT NULL,
            desired TEXT NOT NULL)"""
    )
    conn.execute(
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            node TEXT,
            pool TEXT,
            before TEXT,
            after TEXT,
            detail TEXT NOT NULL DEFAULT '')"""
    )
    conn.execute("CREATE TABLE ledger (pool TEXT PRIMARY KEY, node_seconds REAL NOT NULL, usd REAL NOT NULL)")


def _v2_overrides_and_hourly_ledger(conn: sqlite3.Connection) -> None:
    """Operator overrides; the ledger in hourly buckets; indexes for retention and the API's reads."""
    conn.execute(
        """CREATE TABLE overrides (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            data TEXT NOT NULL,
            at REAL NOT NULL,
            by TEXT NOT NULL DEFAULT '')"""
    )
    conn.execute(
        """CREATE TABLE ledger_hourly (
            pool TEXT NOT NULL,
            hour REAL NOT NULL,
            node_seconds REAL NOT NULL,
            usd REAL NOT NULL,
            PRIMARY KEY (pool, hour))"""
    )
    # Totals from before the buckets existed land in the hour of the last commit (or hour 0).
    conn.execute(
        """INSERT INTO ledger_hourly (pool, hour, node_seconds, usd)
           SELECT pool,
                  COALESCE((SELECT CAST(at / ? AS INTEGER) * ? FROM controller_state WHERE id = 1), 0),
                  node_seconds, usd
           FROM ledger""",
        (LEDGER_BUCKET_S, LEDGER_BUCKET_S),
    )
    conn.execute("DROP TABLE ledger")
    conn.execute("CREATE INDEX decisions_at ON decisions (at)")
    conn.execute("CREATE INDEX audit_at ON audit (at)")


def _v3_audit_actor(conn: sqlite3.Connection) -> None:
    """Who did it (token name), what it acted on and the request that did it; audit rows never change."""
    conn.execute("ALTER TABLE audit ADD COLUMN actor TEXT")
    conn.execute("ALTER TABLE audit ADD COLUMN target TEXT")
    conn.execute("ALTER TABLE audit ADD COLUMN request_id TEXT")
    conn.execute(
        "CREATE TRIGGER audit_append_only BEFORE UPDATE ON audit "
        "BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END"
    )


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _v1_initial,
    _v2_overrides_and_hourly_ledger,
    _v3_audit_actor,
)
"""Ordered: migration i+1 takes the schema from version i to i+1. Append only; never edit a shipped one."""

LATEST = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        "version INTEGER PRIMARY KEY, applied TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
    )
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection, *, target: int = LATEST, where: str = "store") -> int:
    """Bring the schema to `target`, one migration per transaction; returns the version reached.

    Safe against a second process migrating at the same time: each step re-reads the version under the
    write lock.
    """
    current = schema_version(conn)
    if current > LATEST:
        raise StoreError(
            f"{where}: schema version {current} is newer than this controller understands ({LATEST}); "
            "upgrade the controller"
        )
    while current < target:
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = schema_version(conn)
            if current < target:
                MIGRATIONS[current](conn)
                current += 1
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (current,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return current
